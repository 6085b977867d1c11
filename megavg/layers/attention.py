"""Scaled dot-product attention on [B, S, H, D] tensors: flash-attn on GPU, torch SDPA otherwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megavg.layers.backends import resolve_attention
from megavg.utils.errors import UserError

FLASH_DTYPES = (torch.float16, torch.bfloat16)


@torch.compiler.assume_constant_result  # dynamo runs it once per trace: no graph break per call
def _backend_for(dtype: torch.dtype, backend: str) -> str:
    """``flash`` or ``sdpa`` for inputs of ``dtype``: flash-attn takes only fp16/bf16, so ``auto`` gives
    float32 inputs (exact fp32 runs on GPU) to SDPA, and an explicit ``flash`` refuses them.

    Under ``torch.compile`` its result is a trace-time constant: the resolution (cached library
    detection, a one-time log line) would otherwise break the graph at every attention call."""
    chosen = resolve_attention(backend)
    if chosen == "flash" and dtype not in FLASH_DTYPES:
        if backend != "auto":
            raise UserError(f"layers.attention: flash-attn takes fp16/bf16 inputs, got {dtype} (use 'auto')")
        return "sdpa"
    return chosen


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Full (non-causal) softmax attention. q [B, Sq, H, D], k/v [B, Sk, H, D] -> [B, Sq, H, D]."""
    if _backend_for(q.dtype, backend) == "flash":
        from flash_attn import flash_attn_func  # GPU path

        return flash_attn_func(q, k, v)
    # SDPA wants [B, H, S, D]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
