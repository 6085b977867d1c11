"""Normalisation layers: LayerNorm computed in float32 (as Wan does) and RMSNorm (TE-fused or torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megavg.layers.backends import resolve_linear, te_device


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32 whatever the input dtype; returns float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


def make_rms_norm(dim: int, eps: float, backend: str) -> nn.Module:
    """RMSNorm with a learned ``weight`` [dim]: TE's fused kernel when linears run on TE, else torch."""
    if resolve_linear(backend) == "torch":
        return nn.RMSNorm(dim, eps=eps, elementwise_affine=True)
    import transformer_engine.pytorch as te  # GPU path

    return te.RMSNorm(dim, eps=eps, device=te_device(), params_dtype=torch.get_default_dtype())
