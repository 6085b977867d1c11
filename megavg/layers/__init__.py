"""Layers behind small interfaces, one implementation chosen per run: linear (Transformer Engine | torch),
LayerNorm + linear (``te.LayerNormLinear`` | torch), attention (flash-attn | torch SDPA),
RMSNorm (TE | torch), 3-D RoPE and the FP8 recipe logic."""

from megavg.layers.attention import attention
from megavg.layers.config import Fp8Config, LayerConfig
from megavg.layers.fp8 import fp8_autocast, fp8_blocks
from megavg.layers.linear import make_layer_norm_linear, make_linear
from megavg.layers.norms import Fp32LayerNorm, make_rms_norm
from megavg.layers.rope import apply_rope, rope_tables

__all__ = [
    "Fp8Config",
    "Fp32LayerNorm",
    "LayerConfig",
    "apply_rope",
    "attention",
    "fp8_autocast",
    "fp8_blocks",
    "make_layer_norm_linear",
    "make_linear",
    "make_rms_norm",
    "rope_tables",
]
