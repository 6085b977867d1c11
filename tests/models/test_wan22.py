"""Wan 2.2 DiTs (A14B experts, TI2V-5B): equality with diffusers' WanTransformer3DModel for both timestep
shapes ([B] and per-token [B, S]), preset sizes against diffusers at the released configs."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from megavg.models import build
from megavg.models.wan.state_dict_adapter import to_megavg
from megavg.utils.errors import UserError
from tests.models.wan_reference import diffusers_config, diffusers_forward, inputs, random_diffusers

TINY_22 = ["wan-tiny-t2v", "wan-tiny-i2v-a14b", "wan-tiny-ti2v"]


def per_token_timesteps(args, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """[B, S]: each sample's timestep on every token, the first latent frame's tokens at 0 (TI2V I2V)."""
    grid = [n // p for n, p in zip(latents.shape[2:], args.patch_size)]
    per_token = timestep[:, None, None, None].expand(-1, *grid).clone()
    per_token[:, 0] = 0  # the conditioning frame is clean
    return per_token.flatten(1)


def pair(preset: str):
    ref = random_diffusers(preset)
    model = build(preset).eval()
    model.load_state_dict(to_megavg(ref.state_dict()), strict=True)
    return ref, model


@pytest.mark.parametrize("per_token", [False, True], ids=["t[B]", "t[B,S]"])
@pytest.mark.parametrize("preset", TINY_22)
def test_matches_diffusers(preset, per_token):
    ref, model = pair(preset)
    latents, t, text, image = inputs(model.args)
    if per_token:
        t = per_token_timesteps(model.args, latents, t)
    with torch.no_grad():
        out = model(latents, t, text, image)
    expected = diffusers_forward(ref, latents, t, text, image)
    print(f"{preset} {'t[B,S]' if per_token else 't[B]'}: max abs diff {(out - expected).abs().max():.2e}")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_per_token_timesteps_matter_and_broadcast():
    """All tokens at the sample's timestep equals the [B] form; a clean first frame changes the output."""
    model = build("wan-tiny-ti2v").eval()
    latents, t, text, _ = inputs(model.args)
    tokens = model.num_tokens(latents.shape)
    with torch.no_grad():
        flat = model(latents, t, text)
        torch.testing.assert_close(model(latents, t[:, None].expand(-1, tokens), text), flat)
        mixed = model(latents, per_token_timesteps(model.args, latents, t), text)
    assert (mixed - flat).abs().max() > 1e-3


def test_per_token_timesteps_survive_token_padding():
    """FP8 runs pad tokens to a multiple of 16: the per-token time path is padded alike and cropped."""
    model = build("wan-tiny-ti2v").eval()
    latents, t, text, _ = inputs(model.args, grid=(1, 3, 3))
    t = per_token_timesteps(model.args, latents, t)
    with torch.no_grad():
        reference = model(latents, t, text)
        model.token_shard.multiple = 16
        torch.testing.assert_close(model(latents, t, text), reference, atol=1e-6, rtol=1e-6)


def test_bad_timestep_shape_is_a_user_error():
    model = build("wan-tiny-ti2v")
    latents, t, text, _ = inputs(model.args)
    with pytest.raises(UserError, match="timestep must be"):
        model(latents, t[:, None].expand(-1, 5), text)


# parameter counts of diffusers' WanTransformer3DModel at the released configs (computed on meta)
EXPECTED_PARAMS = {
    "wan2.2-t2v-a14b": 14_288_491_584,  # per expert; the model is two of these
    "wan2.2-i2v-a14b": 14_288_901_184,  # the patch embedder takes 36 channels
    "wan2.2-ti2v-5b": 4_999_787_712,
    # DC-VideoGen students (patch 1; DC-AE-V f32t4c32 for A14B, f64t4c128 for TI2V-5B)
    "dc-videogen-wan2.2-t2v-a14b": 14_288_163_872,
    "dc-videogen-wan2.2-i2v-a14b": 14_288_348_192,
    "dc-videogen-wan2.2-ti2v-5b": 4_999_394_432,
}


@pytest.mark.parametrize("preset", EXPECTED_PARAMS)
def test_preset_parameter_counts(preset):
    with torch.device("meta"):
        model = build(preset)
        ref = WanTransformer3DModel(**diffusers_config(model.args))
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in ref.parameters()) == EXPECTED_PARAMS[preset]
    shapes = {k: tuple(v.shape) for k, v in to_megavg(ref.state_dict()).items()}
    assert shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_presets_follow_released_configs():
    """Wan-AI/Wan2.2-*-Diffusers transformer configs: A14B = Wan 2.1-14B shape, I2V without CLIP tokens;
    TI2V-5B: 3072 wide, 24 heads of 128, 30 layers, FFN 14336, 48 latent channels, patch 1x2x2."""
    with torch.device("meta"):
        t2v, i2v, ti2v = (build(p).args for p in ("wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b"))
    assert (t2v.dim, t2v.num_layers, t2v.in_channels, t2v.image_dim) == (5120, 40, 16, None)
    assert (i2v.in_channels, i2v.out_channels, i2v.image_dim) == (36, 16, None)
    assert (ti2v.dim, ti2v.num_heads, ti2v.head_dim, ti2v.num_layers, ti2v.ffn_dim) == (
        3072,
        24,
        128,
        30,
        14336,
    )
    assert (ti2v.in_channels, ti2v.out_channels, ti2v.patch_size) == (48, 48, (1, 2, 2))
