"""The planner on Wan 2.2: token counts from each base's VAE (Wan 2.1 VAE 8x for A14B, Wan 2.2 VAE 16x for
TI2V-5B) and patch 1x2x2, as the diffusers pipelines shape latents ((F - 1) // 4 + 1, H / s, W / s)."""

from __future__ import annotations

import pytest
import torch

from megavg.models import build
from megavg.plan import model
from megavg.utils.errors import UserError


def args(preset: str):
    with torch.device("meta"):
        return build(preset).args


@pytest.mark.parametrize(
    "preset, frames, size, tokens",
    [
        ("wan2.2-t2v-a14b", 81, (720, 1280), 21 * (720 // 16) * (1280 // 16)),  # 75,600
        ("wan2.2-i2v-a14b", 81, (720, 1280), 75_600),
        ("wan2.2-ti2v-5b", 121, (704, 1280), 31 * (704 // 32) * (1280 // 32)),  # 27,280
        # students: DC-AE-V f32t4c32 (A14B) and f64t4c128 (TI2V-5B), patch 1, 4k frames
        ("dc-videogen-wan2.2-t2v-a14b", 80, (704, 1280), 20 * (704 // 32) * (1280 // 32)),  # 17,600
        ("dc-videogen-wan2.2-ti2v-5b", 120, (704, 1280), 30 * (704 // 64) * (1280 // 64)),  # 6,600
    ],
)
def test_tokens_per_sample(preset, frames, size, tokens):
    assert model.tokens_per_sample(args(preset), frames, size) == tokens


def test_ti2v_size_must_fit_the_16x_vae_and_patch_2():
    with pytest.raises(UserError, match="multiples of 32 .Wan VAE x16"):
        model.tokens_per_sample(args("wan2.2-ti2v-5b"), 121, (720, 1280))
