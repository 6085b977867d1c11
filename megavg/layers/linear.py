"""Linear layers: Transformer Engine (FP8-capable) or torch, same parameters on both paths.

``make_linear``: ``te.Linear`` or ``torch.nn.Linear`` (``weight`` [out, in], ``bias`` [out]).
``make_layer_norm_linear``: an affine LayerNorm feeding a linear, fused by ``te.LayerNormLinear`` on GPU;
the torch path :class:`LayerNormLinear` is the same math with TE's parameter names, so one state dict
loads into either. TE adds an ``_extra_state`` entry (FP8 scaling state) that model folders never store.
The TE layers are megavg subclasses (still ``te.Linear`` / ``te.LayerNormLinear`` for peft and TE) that
pad their input rows to FP8's GEMM multiple (:func:`padded_rows`), whatever feeds them (B*L text rows,
257 CLIP tokens, video tokens).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from megavg.layers.backends import resolve_linear, te_device
from megavg.layers.fp8 import FP8_ROW_MULTIPLE


def padded_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for a row-wise layer ``fn``, run on ``x``'s rows zero-padded to :data:`FP8_ROW_MULTIPLE`
    (TE's FP8 GEMM rule) and cropped back. x [..., in] -> [..., out]; no copy when already a multiple."""
    rows = math.prod(x.shape[:-1])
    pad = -rows % FP8_ROW_MULTIPLE
    if not pad:
        return fn(x)
    flat = F.pad(x.reshape(rows, x.shape[-1]), (0, 0, 0, pad))  # [rows + pad, in]
    return fn(flat)[:rows].reshape(*x.shape[:-1], -1)


@functools.cache
def te_layer_classes() -> tuple[type, type]:
    """megavg's ``te.Linear`` and ``te.LayerNormLinear`` subclasses (rows padded for FP8). GPU path.

    They keep TE's class names: peft's ``_get_in_out_features`` recognises TE layers by class name."""
    import transformer_engine.pytorch as te

    class Linear(te.Linear):
        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            return padded_rows(lambda rows: super(Linear, self).forward(rows, *args, **kwargs), x)

    class LayerNormLinear(te.LayerNormLinear):
        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            return padded_rows(lambda rows: super(LayerNormLinear, self).forward(rows, *args, **kwargs), x)

    return Linear, LayerNormLinear


def is_linear(module: nn.Module) -> bool:
    """A plain linear layer of either backend: ``nn.Linear`` or ``te.Linear`` (not LayerNorm + linear)."""
    if isinstance(module, nn.Linear):
        return True
    te = sys.modules.get("transformer_engine.pytorch")  # a model holding TE layers has imported it
    return te is not None and isinstance(module, te.Linear)


def uses_transformer_engine(module: nn.Module) -> bool:
    """Whether ``module`` holds a Transformer Engine layer (megavg's TE subclasses included)."""
    return any(
        cls.__module__.split(".")[0] == "transformer_engine"
        for sub in module.modules()
        for cls in type(sub).__mro__
    )


def make_linear(in_features: int, out_features: int, backend: str, bias: bool = True) -> nn.Module:
    """A linear layer of the resolved ``backend`` (``te`` or ``torch``; ``auto`` is resolved here)."""
    if resolve_linear(backend) == "torch":
        return nn.Linear(in_features, out_features, bias=bias)
    return te_layer_classes()[0](  # GPU path: TE imported only when chosen
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
    return te_layer_classes()[1](  # GPU path
        in_features,
        out_features,
        eps=eps,
        bias=bias,
        normalization="LayerNorm",
        device=te_device(),
        params_dtype=torch.get_default_dtype(),
    )
