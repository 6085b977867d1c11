"""Apply Ulysses sequence parallelism to a built Wan model (torchtitan style: the model knows no ranks).

After :func:`apply_ulysses`, every rank of the SP group calls ``model(latents, t, text, image)`` with the
SAME full inputs; the model then

1. shards the token sequence right after patch embedding (zero-padding it to a multiple of P),
2. runs the blocks on its shard: self-attention trades tokens for heads around the attention entry point
   (one all-to-all for q/k/v, one back), RoPE applied after the trade with global positions; padding
   tokens are cut off before attending, so they never act as keys (pad + mask, never a wrong result
   for token counts that do not divide by P); cross-attention stays local
   (query shard x replicated text / image tokens),
3. applies the head to its shard and all-gathers the prediction, returned in full on every rank.

Gradients follow the SP-sum convention of :mod:`megavg.parallel.ulysses`: each rank's parameter gradients
summed over the SP group equal the single-process gradients (the engine scales the loss accordingly).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from megavg.models.wan.layers import AttentionCore
from megavg.models.wan.model import Model
from megavg.parallel.ulysses import gather_sequence, heads_to_seq, seq_to_heads, shard_sequence
from megavg.utils.errors import UserError


class UlyssesAttention(nn.Module):
    """Wraps an :class:`AttentionCore`: local tokens of all heads in, local tokens of all heads out."""

    def __init__(self, core: AttentionCore, group):
        super().__init__()
        self.core, self.group = core, group

    def forward(self, q, k, v, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        qkv = torch.stack((q, k, v), dim=3).flatten(3)  # [B, S_pad/P, H, 3*D]: one all-to-all for all three
        qkv = seq_to_heads(qkv, self.group)  # [B, S_pad, H/P, 3*D]
        q, k, v = qkv.unflatten(-1, (3, -1)).unbind(3)  # each [B, S_pad, H/P, D]
        out = self.core(q, k, v, rope)  # RoPE on global positions; padding cut off inside
        return heads_to_seq(out, self.group)  # [B, S_pad/P, H, D]


class SequenceShard(nn.Module):
    """Pads [B, S, dim] to a multiple of P * ``multiple`` and keeps this rank's chunk."""

    def __init__(self, group, multiple: int = 1):
        super().__init__()
        self.group, self.multiple = group, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shard_sequence(x, self.group, dim=1, multiple=self.multiple)


class SequenceGather(nn.Module):
    def __init__(self, group):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor, length: int) -> torch.Tensor:
        return gather_sequence(x, length, self.group, dim=1)


def check_sp_size(num_heads: int, sp_size: int) -> None:
    """Ulysses splits the attention heads over the SP group: ``sp_size`` must divide ``num_heads``."""
    if num_heads % sp_size:
        raise UserError(
            f"config parallel.sp_size: {num_heads} attention heads are not divisible by the SP size "
            f"{sp_size} (Ulysses splits heads across the group; choose an SP size dividing the head count)"
        )


def apply_ulysses(model: Model, group) -> Model:
    """Make ``model`` sequence-parallel over ``group`` (in place; returns it). P = 1 leaves it unchanged."""
    world = dist.get_world_size(group)
    if world == 1:
        return model
    check_sp_size(model.args.num_heads, world)
    if isinstance(model.token_shard, SequenceShard):
        raise UserError("sequence parallelism is already applied to this model")
    model.token_shard = SequenceShard(group, model.token_multiple)
    model.token_gather = SequenceGather(group)
    for block in model.blocks:
        block.self_attn.core = UlyssesAttention(block.self_attn.core, group)
    return model
