"""Wan-2.1 DiT: equality with diffusers' WanTransformer3DModel, preset sizes, checkpointing, fallbacks."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import WanTransformer3DModel

from megavg.layers import LayerConfig, backends
from megavg.models import build, load, save
from megavg.models.wan.state_dict_adapter import to_megavg
from megavg.utils.errors import UserError
from megavg.utils.schema import from_dict
from tests.models.wan_reference import diffusers_config, diffusers_forward, inputs, random_diffusers

TINY = ["wan-tiny-t2v", "wan-tiny-i2v", "wan-tiny-student-t2v", "wan-tiny-student-i2v"]


def megavg_from_diffusers(ref: WanTransformer3DModel, preset: str):
    model = build(preset).eval()
    model.load_state_dict(to_megavg(ref.state_dict()), strict=True)
    return model


@pytest.mark.parametrize("preset", TINY)
def test_matches_diffusers(preset):
    ref = random_diffusers(preset)
    model = megavg_from_diffusers(ref, preset)
    x = inputs(model.args)
    with torch.no_grad():
        out = model(*x)
    assert out.shape == (2, model.args.out_channels, *x[0].shape[2:])
    torch.testing.assert_close(out, diffusers_forward(ref, *x), atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    ref = random_diffusers("wan-tiny-i2v")
    model = megavg_from_diffusers(ref, "wan-tiny-i2v")
    loaded = load(save(model, tmp_path / "wan")).eval()
    x = inputs(model.args)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*x), diffusers_forward(ref, *x), atol=1e-5, rtol=1e-5)


EXPECTED_PARAMS = {
    "wan2.1-t2v-1.3b": 1_418_996_800,
    "wan2.1-t2v-14b": 14_288_491_584,
    "wan2.1-i2v-14b": 16_394_878_784,
    "dc-videogen-wan2.1-t2v-14b": None,  # no published count: compared with diffusers only
    "dc-videogen-wan2.1-i2v-14b": None,
}


@pytest.mark.parametrize("preset", EXPECTED_PARAMS)
def test_preset_parameter_counts(preset):
    with torch.device("meta"):
        model = build(preset)
        ref = WanTransformer3DModel(**diffusers_config(model.args))
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in ref.parameters())
    if EXPECTED_PARAMS[preset] is not None:
        assert count == EXPECTED_PARAMS[preset]
    shapes = {k: tuple(v.shape) for k, v in to_megavg(ref.state_dict()).items()}
    assert shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_student_presets_follow_dc_videogen_release():
    for preset, in_ch in (("dc-videogen-wan2.1-t2v-14b", 32), ("dc-videogen-wan2.1-i2v-14b", 68)):
        with torch.device("meta"):
            args = build(preset).args
        assert (args.patch_size, args.in_channels, args.out_channels, args.dim) == (
            (1, 1, 1),
            in_ch,
            32,
            5120,
        )


@pytest.mark.parametrize("preset", ["wan-tiny-t2v", "wan-tiny-i2v"])
def test_activation_checkpointing_same_gradients(preset):
    model = build(preset)
    x = inputs(model.args)
    grads = []
    for flag in (False, True):
        model.args.grad_checkpointing = flag
        model.zero_grad()
        model(*x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert grads[0][name].abs().sum() > 0, f"no gradient reached {name}"
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-6)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_torch_fallback_logs_one_line_each():
    backends.clear_cache()
    handler, logger = _Records(), logging.getLogger("megavg")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # the fallback lines are DEBUG unless asked (quiet logs)
    try:
        for _ in range(2):
            model = build("wan-tiny-t2v")
            model(*inputs(model.args))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert sum("transformer_engine" in m and "using torch" in m for m in handler.messages) == 1
    assert sum("flash_attn" in m and "using sdpa" in m for m in handler.messages) == 1
    assert isinstance(model.blocks[0].self_attn.q, torch.nn.Linear)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
@pytest.mark.parametrize("layers", [{"linear": "te"}, {"attention": "flash"}, {"fp8": {"enabled": True}}])
def test_explicit_gpu_backend_without_gpu_is_an_error(layers):
    with pytest.raises(UserError, match="needs"):
        model = build("wan-tiny-t2v", num_layers=1, layers=from_dict(LayerConfig, layers))
        model(*inputs(model.args))


def test_bad_inputs_are_user_errors():
    model = build("wan-tiny-t2v")
    latents, t, text, _ = inputs(model.args)
    with pytest.raises(UserError, match="latents must be"):
        model(latents[:, :3], t, text)
    with pytest.raises(UserError, match="not divisible by patch"):
        model(latents[..., :3], t, text)
    with pytest.raises(UserError, match="T2V"):
        model(latents, t, text, torch.zeros(2, 3, 24))


def test_padding_tokens_change_nothing():
    """FP8 runs pad the sequence to a multiple of 16: padded tokens are never keys and are cropped."""
    model = build("wan-tiny-i2v")
    x = inputs(model.args, grid=(1, 3, 3))  # 9 tokens
    reference = model(*x)
    ref_grads = torch.autograd.grad(reference.square().sum(), list(model.parameters()))
    model.token_shard.multiple = 16
    padded = model(*x)
    torch.testing.assert_close(padded, reference, atol=1e-6, rtol=1e-6)
    for got, want in zip(torch.autograd.grad(padded.square().sum(), list(model.parameters())), ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_bf16_error_like_diffusers():
    """In bf16 our precision handling (fp32 norms/modulation/RoPE) loses no more than diffusers' does."""
    ref = random_diffusers("wan-tiny-i2v")
    model = megavg_from_diffusers(ref, "wan-tiny-i2v")
    x = inputs(model.args)
    exact = diffusers_forward(ref, *x)
    low_x = [t.bfloat16() if i in (0, 2, 3) else t for i, t in enumerate(x)]
    ref_err = _rel(diffusers_forward(ref.to(torch.bfloat16), *low_x), exact)
    out = model.to(torch.bfloat16)(*low_x)
    assert out.dtype == torch.bfloat16
    assert _rel(out.detach(), exact) <= 1.5 * ref_err + 1e-3
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b).norm() / b.norm()).item()
