"""Ulysses sequence parallelism: autograd-aware all-to-all, sequence shard/gather, group broadcast.

Around attention, each rank of a sequence-parallel (SP) group of size P trades its token shard of all
heads for the full sequence of H/P heads (``[B, S/P, H, D] -> [B, S, H/P, D]``), attends, and trades back.

Gradient convention ("SP-sum"), relied on by the training engine: every rank computes the same loss on
the same gathered output. The backward of :func:`gather_sequence` hands each rank only the gradient of
its own shard (no communication), so a rank's parameter gradients cover only the paths through its
tokens, and **summing them over the SP group gives the single-process gradient**. DeepSpeed averages
gradients over all DP x SP ranks, so the trainer back-propagates ``sp_size * loss`` (see
:mod:`megavg.parallel.state` for why no ``mpu`` is handed to DeepSpeed).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megavg.utils.errors import UserError


def _all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group) -> torch.Tensor:
    world = dist.get_world_size(group)
    if x.shape[scatter_dim] % world:
        raise UserError(
            f"all-to-all: dim {scatter_dim} of size {x.shape[scatter_dim]} does not split {world} ways"
        )
    send = torch.stack(x.chunk(world, dim=scatter_dim)).contiguous()  # [P, ...], chunk j goes to rank j
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim)  # chunks from ranks 0..P-1 in order


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scatter_dim, gather_dim, group):
        ctx.dims, ctx.group = (scatter_dim, gather_dim), group
        return _all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, gather_dim, scatter_dim, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group) -> torch.Tensor:
    """Split ``x`` along ``scatter_dim`` across the group, concatenate what arrives along ``gather_dim``."""
    return _AllToAll.apply(x, scatter_dim, gather_dim, group)


def seq_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """[B, S/P, H, D] (all heads, local tokens) -> [B, S, H/P, D] (all tokens, local heads)."""
    return all_to_all(x, scatter_dim=2, gather_dim=1, group=group)


def heads_to_seq(x: torch.Tensor, group) -> torch.Tensor:
    """[B, S, H/P, D] -> [B, S/P, H, D]; inverse of :func:`seq_to_heads`."""
    return all_to_all(x, scatter_dim=1, gather_dim=2, group=group)


def padded_length(length: int, world: int) -> int:
    """Smallest multiple of ``world`` that holds ``length`` tokens."""
    return -(-length // world) * world


def shard_sequence(x: torch.Tensor, group, dim: int = 1, multiple: int = 1) -> torch.Tensor:
    """This rank's contiguous chunk of ``x`` along ``dim``, after zero-padding it to a multiple of
    P * ``multiple`` (so each chunk's length is a multiple of ``multiple``).

    The padding tokens sit at the end of the sequence (in the last ranks' shards); the attention core
    drops them before attending, so they never act as keys, and :func:`gather_sequence` drops them from
    the output.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    pad = padded_length(x.shape[dim], world * multiple) - x.shape[dim]
    if pad:
        pad_spec = [0, 0] * (x.ndim - 1 - dim) + [0, pad]
        x = F.pad(x, pad_spec)
    return x.chunk(world, dim=dim)[rank]


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad):
        world, rank = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
        return grad.chunk(world, dim=ctx.dim)[rank].contiguous(), None, None


def gather_sequence(x: torch.Tensor, length: int, group, dim: int = 1) -> torch.Tensor:
    """All shards concatenated along ``dim`` and cut to the true ``length`` (padding removed).

    Backward gives this rank only its own shard's gradient (SP-sum convention, see module docstring).
    """
    return _GatherSequence.apply(x, dim, group).narrow(dim, 0, length)
