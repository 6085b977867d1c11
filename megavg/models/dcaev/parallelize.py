"""Temporal sequence parallelism for DC-AE-V, applied to a built model (the model knows nothing of ranks).

Each rank of an SP group holds whole chunks of one clip, consecutive in time (rank 0 the earliest).
``n`` chunks over ``P`` ranks are split like ``torch.tensor_split``: the first ``n % P`` ranks get one
chunk more; a trailing partial chunk counts as a chunk and sits on the last rank. Every chunk-causal
conv gets the left pad of its first chunk from the previous rank (halo exchange, see
:mod:`megavg.parallel.halo`), so per-rank outputs concatenated over ranks equal the single-process pass,
and per-rank parameter gradients summed over the group equal the single-process gradients of the sum
of the ranks' losses.

    apply_temporal_sp(model, group)
    x_local = shard_time(x, model.frame_chunk, group)       # encode / forward input
    z_local = model.encode(x_local)
    z = gather_time(z_local, group)                          # optional, autograd-aware
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from megavg.models.dcaev.blocks import ResBlock
from megavg.models.dcaev.model import Model, chunk_convs
from megavg.parallel.halo import HaloLeftContext
from megavg.utils.errors import UserError


def apply_temporal_sp(model: Model, group) -> Model:
    """Make every chunk-causal conv of ``model`` take its first left pad from the previous SP rank."""
    for conv in chunk_convs(model):
        conv.left_context = HaloLeftContext(group)
    return model


def apply_activation_checkpointing(model: Model) -> Model:
    """Recompute every residual block in backward instead of keeping its activations (state-dict keys
    unchanged). Works with temporal SP: the recomputation repeats the halo exchange in the same order
    on every rank."""
    for block in model.modules():
        if isinstance(block, ResBlock) and "forward" not in vars(block):
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return model


def time_split(length: int, chunk: int, world: int) -> list[tuple[int, int]]:
    """[start, end) of each rank's frames: whole chunks, balanced, first ranks get the extra ones."""
    n_chunks = -(-length // chunk)
    if n_chunks < world:
        raise UserError(
            f"temporal SP: {length} frames = {n_chunks} chunks of {chunk}, fewer than {world} ranks"
        )
    base, extra = divmod(n_chunks, world)
    bounds, start = [], 0
    for rank in range(world):
        end = min(length, start + (base + (rank < extra)) * chunk)
        bounds.append((start, end))
        start = end
    return bounds


def shard_time(x: torch.Tensor, chunk: int, group) -> torch.Tensor:
    """This rank's frames (dim 2) of a clip every rank holds in full."""
    start, end = time_split(x.shape[2], chunk, dist.get_world_size(group))[dist.get_rank(group)]
    return x[:, :, start:end]


class _GatherTime(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, group) -> torch.Tensor:
        world = dist.get_world_size(group)
        # on the compute device: NCCL takes no CPU tensors
        lengths = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world)]
        dist.all_gather(lengths, torch.tensor([local.shape[2]], device=local.device), group=group)
        lengths = [int(n) for n in lengths]
        longest = max(lengths)
        padded = torch.nn.functional.pad(local, (0, 0, 0, 0, 0, longest - local.shape[2])).contiguous()
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        rank = dist.get_rank(group)
        ctx.span = (sum(lengths[:rank]), sum(lengths[: rank + 1]))
        return torch.cat([part[:, :, :n] for part, n in zip(parts, lengths)], dim=2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start, end = ctx.span
        return grad[:, :, start:end], None  # own slice only: SP-sum, as for the halo


def gather_time(local: torch.Tensor, group) -> torch.Tensor:
    """Concatenate every rank's piece along time (dim 2). Backward hands each rank the gradient of its
    own piece, so a loss computed identically on every rank keeps the SP-sum gradient convention."""
    return _GatherTime.apply(local, group)
