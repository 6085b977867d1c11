"""Linear layers: Transformer Engine (FP8-capable) or torch, same parameters on both paths.

``make_linear``: ``te.Linear`` or ``torch.nn.Linear`` (``weight`` [out, in], ``bias`` [out]).
``make_layer_norm_linear``: an affine LayerNorm feeding a linear, fused by ``te.LayerNormLinear`` on GPU;
the torch path :class:`LayerNormLinear` is the same math with TE's parameter names, so one state dict
loads into either. TE adds an ``_extra_state`` entry (FP8 scaling state) that model folders never store.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from megavg.layers.backends import resolve_linear, te_device


def make_linear(in_features: int, out_features: int, backend: str, bias: bool = True) -> nn.Module:
    """A linear layer of the resolved ``backend`` (``te`` or ``torch``; ``auto`` is resolved here)."""
    if resolve_linear(backend) == "torch":
        return nn.Linear(in_features, out_features, bias=bias)
    import transformer_engine.pytorch as te  # GPU path: imported only when chosen

    return te.Linear(
        in_features, out_features, bias=bias, device=te_device(), params_dtype=torch.get_default_dtype()
    )


class LayerNormLinear(nn.Module):
    """``linear(layer_norm(x))`` with the norm in float32 (as Wan computes it), cast back to ``x.dtype``.

    Parameters, named as in ``te.LayerNormLinear``: ``layer_norm_weight``/``layer_norm_bias`` [in],
    ``weight`` [out, in], ``bias`` [out]. Initialised like ``nn.LayerNorm`` followed by ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, eps: float, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.layer_norm_weight = nn.Parameter(torch.ones(in_features))
        self.layer_norm_bias = nn.Parameter(torch.zeros(in_features))
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.layer_norm_weight.float(), self.layer_norm_bias.float()
        h = F.layer_norm(x.float(), (x.shape[-1],), weight, bias, self.eps).type_as(x)
        return F.linear(h, self.weight, self.bias)


def make_layer_norm_linear(
    in_features: int, out_features: int, eps: float, backend: str, bias: bool = True
) -> nn.Module:
    """LayerNorm + linear as one layer: ``te.LayerNormLinear`` (fused kernel, FP8-capable) or torch."""
    if resolve_linear(backend) == "torch":
        return LayerNormLinear(in_features, out_features, eps, bias=bias)
    import transformer_engine.pytorch as te  # GPU path

    return te.LayerNormLinear(
        in_features,
        out_features,
        eps=eps,
        bias=bias,
        normalization="LayerNorm",
        device=te_device(),
        params_dtype=torch.get_default_dtype(),
    )
