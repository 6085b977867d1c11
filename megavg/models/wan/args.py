"""Wan 2.1 / 2.2 DiT hyper-parameters and the named presets (diffusers config names in comments)."""

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
        """Takes CLIP image tokens (Wan 2.1 I2V)."""
        return self.image_dim is not None

    @property
    def takes_image(self) -> bool:
        """Conditioned on a first frame: CLIP tokens and/or mask + image-latent channels beside the noise
        (Wan 2.1 I2V, Wan 2.2 I2V-A14B, whose experts take no CLIP tokens)."""
        return self.is_i2v or self.in_channels > self.out_channels


_T2V_1_3B = Args()
_T2V_14B = Args(dim=5120, num_heads=40, ffn_dim=13824, num_layers=40)
_I2V_14B = dataclasses.replace(_T2V_14B, in_channels=36, image_dim=1280)
# Wan 2.2 (Wan-AI/Wan2.2-*-Diffusers transformer/config.json, Wan2.2 wan/configs/*.py): the A14B models are
# two experts of the Wan 2.1-14B architecture (high noise: transformer/, high_noise_model/; low noise:
# transformer_2/, low_noise_model/); I2V-A14B drops the CLIP image tokens (image_dim null) and takes the
# 16 noise + 4 mask + 16 image-latent channels only. TI2V-5B: Wan 2.2 VAE (48 channels, 16x spatial) with
# per-token timesteps (the conditioning frame's tokens at 0) instead of mask channels.
_T2V_A14B = _T2V_14B
_I2V_A14B = dataclasses.replace(_T2V_14B, in_channels=36)
_TI2V_5B = Args(dim=3072, num_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48)
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
    "wan2.2-t2v-a14b": _T2V_A14B,  # one expert; the pipeline holds two (boundary_ratio 0.875)
    "wan2.2-i2v-a14b": _I2V_A14B,  # one expert; boundary_ratio 0.9
    "wan2.2-ti2v-5b": _TI2V_5B,
    # DC-VideoGen students of Wan 2.2 (docs/wan22.md): A14B experts on DC-AE-V f32t4c32 with patch 1 (I2V:
    # 32 noise + 4 mask + 32 image latent, no CLIP); TI2V-5B on f64t4c128 with patch 1, as its Wan 2.2 VAE
    # with patch 2 already reaches 32x per token (f32 with patch 1 would save nothing)
    "dc-videogen-wan2.2-t2v-a14b": dataclasses.replace(
        _T2V_A14B, patch_size=(1, 1, 1), in_channels=32, out_channels=32
    ),
    "dc-videogen-wan2.2-i2v-a14b": dataclasses.replace(
        _I2V_A14B, patch_size=(1, 1, 1), in_channels=68, out_channels=32
    ),
    "dc-videogen-wan2.2-ti2v-5b": dataclasses.replace(
        _TI2V_5B, patch_size=(1, 1, 1), in_channels=128, out_channels=128
    ),
    "wan-mini-t2v": _MINI,
    # its student at patch 1 on 32-channel latents (the run used f16t4c32: as many tokens as the base;
    # f32t4c32 would give 4x fewer, docs/reproduction.md says why it was not used)
    "wan-mini-student-t2v": dataclasses.replace(_MINI, patch_size=(1, 1, 1), in_channels=32, out_channels=32),
    "wan-tiny-t2v": _TINY,
    "wan-tiny-i2v": dataclasses.replace(_TINY, in_channels=12, image_dim=24),
    "wan-tiny-i2v-a14b": dataclasses.replace(_TINY, in_channels=12),  # 4 noise + 4 mask + 4 image latent
    "wan-tiny-ti2v": dataclasses.replace(_TINY, in_channels=12, out_channels=12),
    "wan-tiny-student-t2v": dataclasses.replace(_TINY, patch_size=(1, 1, 1), in_channels=8, out_channels=8),
    "wan-tiny-student-i2v": dataclasses.replace(
        _TINY, patch_size=(1, 1, 1), in_channels=20, out_channels=8, image_dim=24
    ),
    # a Wan 2.2 I2V-A14B expert's student: 8 noise + 4 mask + 8 image latent, no CLIP
    "wan-tiny-student-i2v-a14b": dataclasses.replace(
        _TINY, patch_size=(1, 1, 1), in_channels=20, out_channels=8
    ),
}
