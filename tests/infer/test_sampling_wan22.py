"""Wan 2.2 sampling against diffusers' pipelines on the same weights, noise and text (output_type="latent"):
the A14B two-expert switch (WanPipeline / WanImageToVideoPipeline with transformer_2 and boundary_ratio) and
TI2V-5B's per-token timesteps and first-frame conditioning (expand_timesteps=True)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
)
from PIL import Image

from megavg.infer import sampling
from megavg.models import build
from megavg.models.wan.state_dict_adapter import to_megavg
from megavg.utils.errors import UserError
from tests.infer.test_sampling import assert_rel_close as _rel_close
from tests.infer.test_sampling import diffusers_text
from tests.models.wan_reference import random_diffusers

STEPS, SHIFT = 8, 5.0
GUIDANCE, GUIDANCE_2 = 4.0, 3.0
LATENT = (3, 4, 6)  # latent frames, height, width
LENGTHS, NEG_LENGTHS = (5, 3), (7, 2)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Relative to the trajectory's scale (1e-5), as the Wan 2.1 sampler tests; prints the absolute gap."""
    assert expected.abs().max() > 0.1  # a non-degenerate trajectory
    print(f"max abs diff {(actual - expected).abs().max().item():.2e}")
    _rel_close(actual, expected)


def schedulers():
    return {
        "unipc": UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT
        ),
        "euler": FlowMatchEulerDiscreteScheduler(shift=SHIFT),
    }


def experts(preset: str, count: int):
    """(diffusers models, megavg models with the same weights), high-noise expert first."""
    refs = [random_diffusers(preset, seed=s) for s in range(count)]
    ours = []
    for ref in refs:
        model = build(preset).eval()
        model.load_state_dict(to_megavg(ref.state_dict()), strict=True)
        ours.append(model)
    return refs, ours


def texts(dim: int):
    gen = torch.Generator().manual_seed(3)
    text, negative = torch.randn(2, 8, dim, generator=gen), torch.randn(2, 8, dim, generator=gen)
    return diffusers_text(text, LENGTHS), diffusers_text(negative, NEG_LENGTHS)


def noise_for(channels: int) -> torch.Tensor:
    return torch.randn(2, channels, *LATENT, generator=torch.Generator().manual_seed(4))


def pixel_size(spatial: int) -> dict:
    return dict(num_frames=(LATENT[0] - 1) * 4 + 1, height=LATENT[1] * spatial, width=LATENT[2] * spatial)


def run_diffusers(pipe, noise, text, negative, spatial, **kwargs) -> torch.Tensor:
    out = pipe(
        prompt_embeds=text,
        negative_prompt_embeds=negative,
        latents=noise.clone(),
        guidance_scale=GUIDANCE,
        num_inference_steps=STEPS,
        output_type="latent",
        **pixel_size(spatial),
        **kwargs,
    )
    return out.frames


def run_megavg(models, noise, text, negative, solver, **kwargs) -> torch.Tensor:
    two = dict(model_2=models[1], guidance_2=GUIDANCE_2) if len(models) == 2 else {}
    return sampling.sample(
        models[0],
        noise,
        text,
        negative,
        steps=STEPS,
        guidance=GUIDANCE,
        shift=SHIFT,
        solver=solver,
        progress=False,
        **two,
        **kwargs,
    )


def count_calls(models) -> list[list[int]]:
    """Per model, the batch size of each forward (a hook)."""
    calls = [[] for _ in models]
    for model, seen in zip(models, calls):
        model.register_forward_hook(lambda _m, args, _o, seen=seen: seen.append(args[0].shape[0]))
    return calls


def expected_split(solver: str, boundary: float) -> tuple[int, int]:
    """Steps of the high- and low-noise expert, from the diffusers scheduler's own timesteps."""
    scheduler = schedulers()[solver]
    scheduler.set_timesteps(STEPS)
    high = int((scheduler.timesteps >= boundary * 1000).sum())
    return high, STEPS - high


@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_t2v_two_experts_match_wan_pipeline(solver):
    boundary = 0.875
    refs, ours = experts("wan-tiny-t2v", 2)
    text, negative = texts(ours[0].args.text_dim)
    noise = noise_for(ours[0].args.out_channels)
    pipe = WanPipeline(
        None,
        None,
        None,
        schedulers()[solver],
        transformer=refs[0],
        transformer_2=refs[1],
        boundary_ratio=boundary,
    )
    expected = run_diffusers(pipe, noise, text, negative, 8, guidance_scale_2=GUIDANCE_2)
    calls = count_calls(ours)
    actual = run_megavg(ours, noise, text, negative, solver, boundary=boundary)
    high, low = expected_split(solver, boundary)
    assert high > 0 and low > 0 and [len(c) for c in calls] == [high, low]  # batched CFG: one call a step
    assert_rel_close(actual, expected)


def tiny_vae(z_dim: int, wan22: bool) -> AutoencoderKLWan:
    """A random small Wan VAE: the 2.1 kind (8x) or the 2.2 kind (residual, patchify 2, 16x)."""
    torch.manual_seed(5)
    extra = dict(is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=16)
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        latents_mean=[0.05 * i - 0.3 for i in range(z_dim)],
        latents_std=[0.5 + 0.1 * i for i in range(z_dim)],
        **(extra if wan22 else {}),
    ).eval()


def image_and_condition(pipe, noise, spatial):
    """A random PIL image and the pipeline's own conditioning of it (its ``prepare_latents``)."""
    size = pixel_size(spatial)
    pixels = np.random.default_rng(6).integers(0, 256, (size["height"], size["width"], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    tensor = pipe.video_processor.preprocess(image, height=size["height"], width=size["width"]).float()
    with torch.no_grad():
        prepared = pipe.prepare_latents(
            tensor,
            2,
            noise.shape[1],
            size["height"],
            size["width"],
            size["num_frames"],
            torch.float32,
            "cpu",
            None,
            noise.clone(),
        )
    return image, prepared[1]


@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_i2v_two_experts_match_image_to_video_pipeline(solver):
    """I2V-A14B: 4 mask + image-latent channels beside the noise, no CLIP tokens, boundary 0.9."""
    boundary = 0.9
    refs, ours = experts("wan-tiny-i2v-a14b", 2)
    text, negative = texts(ours[0].args.text_dim)
    noise = noise_for(ours[0].args.out_channels)
    pipe = WanImageToVideoPipeline(
        None,
        None,
        tiny_vae(4, wan22=False),
        schedulers()[solver],
        transformer=refs[0],
        transformer_2=refs[1],
        boundary_ratio=boundary,
    )
    image, condition = image_and_condition(pipe, noise, 8)
    assert condition.shape == (2, 8, *LATENT)
    expected = run_diffusers(pipe, noise, text, negative, 8, image=image, guidance_scale_2=GUIDANCE_2)
    actual = run_megavg(ours, noise, text, negative, solver, boundary=boundary, condition=condition)
    assert_rel_close(actual, expected)


def test_ti2v_text_to_video_matches_wan_pipeline():
    """TI2V-5B without an image: diffusers passes per-token timesteps all equal to t; megavg's [B] form."""
    refs, ours = experts("wan-tiny-ti2v", 1)
    text, negative = texts(ours[0].args.text_dim)
    noise = noise_for(ours[0].args.out_channels)
    pipe = WanPipeline(None, None, None, schedulers()["unipc"], transformer=refs[0], expand_timesteps=True)
    expected = run_diffusers(pipe, noise, text, negative, 8)
    assert_rel_close(run_megavg(ours, noise, text, negative, "unipc"), expected)


@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_ti2v_image_to_video_matches_image_to_video_pipeline(solver):
    """TI2V-5B with an image: frame 0 is the image latent, its tokens at timestep 0, kept in the result."""
    refs, ours = experts("wan-tiny-ti2v", 1)
    text, negative = texts(ours[0].args.text_dim)
    noise = noise_for(ours[0].args.out_channels)
    pipe = WanImageToVideoPipeline(
        None, None, tiny_vae(12, wan22=True), schedulers()[solver], transformer=refs[0], expand_timesteps=True
    )
    image, first_frame = image_and_condition(pipe, noise, 16)
    assert first_frame.shape == (2, 12, 1, *LATENT[1:])  # the image's latent frame, repeated per sample
    expected = run_diffusers(pipe, noise, text, negative, 16, image=image)
    actual = run_megavg(ours, noise, text, negative, solver, first_frame=first_frame)
    torch.testing.assert_close(actual[:, :, :1], first_frame)
    assert_rel_close(actual, expected)


def test_activate_places_each_expert_once_before_its_first_step():
    _, ours = experts("wan-tiny-t2v", 2)
    order = []
    for i, model in enumerate(ours):
        model.register_forward_pre_hook(lambda *_a, i=i: order.append(("forward", i)))
    text, negative = texts(ours[0].args.text_dim)
    run_megavg(
        ours,
        noise_for(4),
        text,
        negative,
        "unipc",
        boundary=0.875,
        activate=lambda m: order.append(("activate", ours.index(m))),
    )
    high, low = expected_split("unipc", 0.875)
    assert order == [("activate", 0)] + [("forward", 0)] * high + [("activate", 1)] + [("forward", 1)] * low


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"boundary": 0.9}, "come together"),
        ({"guidance_2": 2.0}, "needs model_2"),
        ({"boundary": 1.5, "model_2": "same"}, "boundary must be"),
        ({"first_frame": torch.randn(1, 4, 2, 2, 2)}, "first_frame"),
    ],
)
def test_bad_expert_input(kwargs, message):
    model = build("wan-tiny-t2v").eval()
    if kwargs.get("model_2") == "same":
        kwargs["model_2"] = model
    with pytest.raises(UserError, match=message):
        sampling.sample(
            model,
            torch.randn(1, 4, 2, 2, 2),
            torch.randn(1, 3, 32),
            steps=2,
            guidance=5.0,
            shift=5.0,
            progress=False,
            **kwargs,
        )
