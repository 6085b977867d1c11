"""Wan-2.1 DiT hyper-parameters and the named presets (diffusers config names in comments)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

from megavg.layers.config import LayerConfig
from megavg.utils.errors import UserError


@dataclass
class Args:
    """Architecture of a Wan-2.1 DiT plus per-run execution choices (``layers``, ``grad_checkpointing``)."""

    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    dim: int = 1536  # num_attention_heads * attention_head_dim
    num_heads: int = 12
    ffn_dim: int = 8960
    num_layers: int = 30
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    image_dim: int | None = None  # CLIP token width for I2V (1280); None for T2V
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0
    layers: LayerConfig = field(default_factory=LayerConfig)
    grad_checkpointing: bool = False  # activation checkpointing of every transformer block

    def __post_init__(self) -> None:
        self.layers = copy.deepcopy(self.layers)  # presets never share a mutable LayerConfig with a model
        if self.dim % self.num_heads:
            raise UserError(f"wan args: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise UserError(f"wan args: head dim {self.dim // self.num_heads} must be even (RoPE)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def is_i2v(self) -> bool:
        return self.image_dim is not None


_T2V_1_3B = Args()
_T2V_14B = Args(dim=5120, num_heads=40, ffn_dim=13824, num_layers=40)
_I2V_14B = dataclasses.replace(_T2V_14B, in_channels=36, image_dim=1280)
_MINI = Args(  # the miniature reproduction's base DiT (docs/reproduction.md): f8t4c16 latents, patch 1x2x2
    dim=128, num_heads=4, ffn_dim=512, num_layers=4, text_dim=32, freq_dim=64, in_channels=16, out_channels=16
)
_TINY = Args(
    dim=64, num_heads=4, ffn_dim=128, num_layers=2, text_dim=32, freq_dim=32, in_channels=4, out_channels=4
)

PRESETS: dict[str, Args] = {
    "wan2.1-t2v-1.3b": _T2V_1_3B,
    "wan2.1-t2v-14b": _T2V_14B,
    "wan2.1-i2v-14b": _I2V_14B,
    # DC-VideoGen students (DESIGN.md section 5): patch 1, DC-AE-V f32t4c32 latents
    "dc-videogen-wan2.1-t2v-14b": dataclasses.replace(
        _T2V_14B, patch_size=(1, 1, 1), in_channels=32, out_channels=32
    ),
    "dc-videogen-wan2.1-i2v-14b": dataclasses.replace(
        _I2V_14B, patch_size=(1, 1, 1), in_channels=68, out_channels=32
    ),
    "wan-mini-t2v": _MINI,
    # its student on f32t4c32 latents: patch 1, 4x fewer tokens
    "wan-mini-student-t2v": dataclasses.replace(_MINI, patch_size=(1, 1, 1), in_channels=32, out_channels=32),
    "wan-tiny-t2v": _TINY,
    "wan-tiny-i2v": dataclasses.replace(_TINY, in_channels=12, image_dim=24),
    "wan-tiny-student-t2v": dataclasses.replace(_TINY, patch_size=(1, 1, 1), in_channels=8, out_channels=8),
    "wan-tiny-student-i2v": dataclasses.replace(
        _TINY, patch_size=(1, 1, 1), in_channels=20, out_channels=8, image_dim=24
    ),
}
