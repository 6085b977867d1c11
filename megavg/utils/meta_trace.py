"""Run a model's forward on the meta device and count what training would hold: the bytes autograd saves
for backward and the forward FLOPs. Nothing is allocated, so a 14B model at 720p costs a second.

Attention is traced as a fused kernel saves it (q, k, v, output and the fp32 log-sum-exp; no S x S
matrix: flash-attn on GPU, torch's flash kernel on CPU), whatever SDPA would pick on meta.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode


class _FusedAttention(torch.autograd.Function):
    """Meta stand-in for a fused attention kernel: output shape and the tensors it saves, nothing else."""

    @staticmethod
    def forward(ctx, q, k, v, mode, flops):  # [B, H, S, D] each (SDPA layout)
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # [B, H, S]
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mode, ctx.flops = mode, flops
        return out

    @staticmethod
    def backward(ctx, grad):
        """Shapes only; counts the backward kernel's GEMMs dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q
        (twice the forward; flash-attention's recompute of S = Q K^T is recompute, not counted)."""
        q, k, v, _, _ = ctx.saved_tensors
        ctx.mode.backward_flops += 2 * ctx.flops
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), None, None


class _AttentionAsFused(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` to :class:`_FusedAttention` and counts its FLOPs."""

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.backward_flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            b, h, sq, d = q.shape
            flops = 2 * b * h * sq * k.shape[2] * (d + v.shape[-1])  # q k^T and p v
            self.flops += flops
            return _FusedAttention.apply(q, k, v, self, flops)
        return func(*args, **kwargs)


@dataclass
class Trace:
    saved_bytes: int  # bytes autograd keeps for backward (each storage once; parameters excluded)
    largest: int  # the largest single saved storage, bytes
    flops: int  # forward FLOPs (matmuls, convolutions, attention)


def trace_forward(model: nn.Module, forward: Callable[[], object]) -> Trace:
    """Run ``forward()`` (which calls ``model`` on meta inputs) and count saved bytes and FLOPs."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved[storage._cdata] = storage.nbytes()
        return t

    counter = FlopCounterMode(display=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _AttentionAsFused() as attn, counter:
        forward()
    return Trace(sum(saved.values()), max(saved.values(), default=0), counter.get_total_flops() + attn.flops)


def trace_training_flops(forward: Callable[[], torch.Tensor]) -> tuple[int, int]:
    """(forward, backward) FLOPs of one training pass: ``forward()`` (a model call on meta inputs), then
    a backward from its output. Matmuls and convolutions are counted as autograd runs them: a weight
    gradient only for weights that train, an input gradient only where the input needs one; attention
    as :class:`_FusedAttention` (backward = 2x forward). No recompute (trace a model without
    activation checkpointing)."""
    counter = FlopCounterMode(display=False)
    with _AttentionAsFused() as attn, counter:
        out = forward()
        forward_flops = counter.get_total_flops() + attn.flops
        if out.requires_grad:
            out.float().sum().backward()
    backward_flops = counter.get_total_flops() + attn.flops - forward_flops + attn.backward_flops
    return forward_flops, backward_flops
