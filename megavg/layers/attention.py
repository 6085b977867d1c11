"""Scaled dot-product attention on [B, S, H, D] tensors: flash-attn on GPU, torch SDPA otherwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megavg.layers.backends import resolve_attention


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Full (non-causal) softmax attention. q [B, Sq, H, D], k/v [B, Sk, H, D] -> [B, Sq, H, D]."""
    if resolve_attention(backend) == "flash":
        from flash_attn import flash_attn_func  # GPU path: bf16/fp16 inputs

        return flash_attn_func(q, k, v)
    # SDPA wants [B, H, S, D]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
