"""The megavg samplers against diffusers' schedulers driven the way the Wan pipelines drive them."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from megavg.infer import sampling
from megavg.models import build
from megavg.utils.errors import UserError

STEPS, GUIDANCE, SHIFT = 10, 5.0, 5.0
LENGTHS = (5, 3)  # real text tokens per sample


def unipc(shift: float) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)


def euler(shift: float) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=shift)


def reference(model, scheduler, noise, text, negative, guidance, steps, condition=None, image=None):
    """WanPipeline / WanImageToVideoPipeline's denoising loop (cond then uncond forward, CFG, step)."""
    scheduler.set_timesteps(steps)
    scheduler.set_begin_index(0)
    latents = noise.clone()
    for t in scheduler.timesteps:
        inputs = latents if condition is None else torch.cat([latents, condition], dim=1)
        timestep = t.expand(latents.shape[0])
        pred = model(inputs, timestep, text, image)
        if guidance > 1:
            uncond = model(inputs, timestep, negative, image)
            pred = uncond + guidance * (pred - uncond)
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
    return latents


def diffusers_text(states: torch.Tensor, lengths) -> torch.Tensor:
    """diffusers' _get_t5_prompt_embeds: the real tokens, then zeros up to 512."""
    out = torch.zeros(states.shape[0], sampling.TEXT_TOKENS, states.shape[2])
    for i, n in enumerate(lengths):
        out[i, :n] = states[i, :n]
    return out


@pytest.fixture(params=["t2v", "i2v"])
def case(request):
    """(model, noise, text [B, 8, D] with garbage past each length, mask, negative, condition, image)."""
    torch.manual_seed(0)
    model = build(f"wan-tiny-{request.param}").eval()
    args = model.args
    gen = torch.Generator().manual_seed(1)
    channels = args.out_channels
    noise = torch.randn(2, channels, 2, 4, 6, generator=gen)
    text = torch.randn(2, 8, args.text_dim, generator=gen)  # garbage beyond LENGTHS: the mask drops it
    mask = torch.arange(8)[None] < torch.tensor(LENGTHS)[:, None]
    negative = torch.randn(2, 8, args.text_dim, generator=gen)
    condition = image = None
    if args.is_i2v:
        condition = torch.randn(2, args.in_channels - channels, 2, 4, 6, generator=gen)
        image = torch.randn(2, 257, args.image_dim, generator=gen)
    return model, noise, text, mask, negative, condition, image


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    err = (actual - expected).abs().max().item()
    print(f"max error / scale = {err / expected.abs().max().item():.2e}")
    assert err <= rel * expected.abs().max().item(), f"max error {err} vs scale {expected.abs().max()}"


@pytest.mark.parametrize("solver, make", [("unipc", unipc), ("euler", euler)])
def test_matches_diffusers(case, solver, make):
    model, noise, text, mask, negative, condition, image = case
    neg_lengths = (8, 2)
    neg_mask = torch.arange(8)[None] < torch.tensor(neg_lengths)[:, None]
    expected = reference(
        model,
        make(SHIFT),
        noise,
        diffusers_text(text, LENGTHS),
        diffusers_text(negative, neg_lengths),
        GUIDANCE,
        STEPS,
        condition,
        image,
    )
    actual = sampling.sample(
        model,
        noise,
        text,
        negative,
        steps=STEPS,
        guidance=GUIDANCE,
        shift=SHIFT,
        solver=solver,
        condition=condition,
        image=image,
        text_mask=mask,
        negative_text_mask=neg_mask,
        progress=False,
    )
    assert actual.dtype == torch.float32
    assert expected.abs().max() > 0.1  # a non-degenerate trajectory
    assert_rel_close(actual, expected)


def test_unipc_without_guidance_matches_diffusers(case):
    model, noise, text, mask, _, condition, image = case
    expected = reference(
        model, unipc(3.0), noise, diffusers_text(text, LENGTHS), None, 1.0, 8, condition, image
    )
    unpadded = [t[:n] for t, n in zip(text, LENGTHS)]  # the list form needs no mask
    actual = sampling.sample(
        model, noise, unpadded, steps=8, guidance=1.0, shift=3.0, condition=condition, image=image
    )
    assert_rel_close(actual, expected)


@pytest.mark.parametrize(
    "guidance, cfg_batch, rows",
    [(1.0, None, [1]), (0.5, None, [1]), (5.0, None, [2]), (5.0, True, [2]), (5.0, False, [1, 1])],
)
def test_forwards_per_step(guidance, cfg_batch, rows):
    """Per step: one forward without guidance; with it, one forward of batch 2 (batched CFG, the CPU
    default) or two of batch 1 (sequential)."""
    model = build("wan-tiny-t2v").eval()
    calls = []
    model.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    noise = torch.randn(1, 4, 1, 2, 2)
    text = torch.randn(1, 3, 32)
    sampling.sample(
        model, noise, text, steps=4, guidance=guidance, shift=5.0, progress=False, cfg_batch=cfg_batch
    )
    assert calls == rows * 4


@pytest.mark.parametrize("steps", [1, 2, 8, 30, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 8.0])
def test_schedules_match_diffusers(steps, shift):
    ref = unipc(shift)
    ref.set_timesteps(steps)
    ours = sampling.unipc_schedule(steps, shift)
    assert ours.timesteps.dtype == torch.int64
    assert torch.equal(ours.timesteps, ref.timesteps)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=1e-6, atol=0)
    assert ours.sigmas[-1] == 0

    ref = euler(shift)
    ref.set_timesteps(steps)
    ours = sampling.euler_schedule(steps, shift)
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=1e-6, atol=0)


def test_prepare_text_masks_and_pads():
    text = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = sampling.prepare_text(text, mask, batch=2)
    assert out.shape == (2, 512, 3)
    assert torch.equal(out[0, :2], text[0, :2]) and not out[0, 2:].any()
    assert torch.equal(out[1, :4], text[1]) and not out[1, 4:].any()
    assert torch.equal(out, sampling.prepare_text([text[0, :2], text[1]], None, batch=2))
    assert sampling.prepare_text(text[:1], None, batch=3).shape == (3, 512, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"solver": "ddim"}, "unknown solver"),
        ({"steps": 0}, "steps must be"),
        ({"noise": torch.randn(1, 4, 2, 2)}, "noise must be"),
        ({"text": torch.randn(3, 2, 32)}, "text batch"),
        ({"text_mask": torch.ones(1, 5, dtype=torch.bool)}, "text_mask"),
        ({"condition": torch.randn(1, 8, 2, 2, 2)}, "condition"),
    ],
)
def test_bad_input(kwargs, message):
    model = build("wan-tiny-t2v").eval()
    call = {"noise": torch.randn(1, 4, 1, 2, 2), "text": torch.randn(1, 3, 32), "steps": 2, "shift": 5.0}
    call.update(kwargs)
    with pytest.raises(UserError, match=message):
        sampling.sample(model, call.pop("noise"), call.pop("text"), guidance=5.0, progress=False, **call)
