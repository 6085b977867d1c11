"""Stand-in for ``transformer_engine.pytorch``: the modules, autocast and checkpoint megavg uses."""

from transformer_engine.pytorch.distributed import checkpoint
from transformer_engine.pytorch.fp8 import FP8GlobalStateManager, autocast, fp8_autocast
from transformer_engine.pytorch.module import LayerNormLinear, LayerNormMLP, Linear, RMSNorm

__all__ = [
    "FP8GlobalStateManager",
    "LayerNormLinear",
    "LayerNormMLP",
    "Linear",
    "RMSNorm",
    "autocast",
    "checkpoint",
    "fp8_autocast",
]
