"""Wan 2.2 TI2V-5B through the runner, end to end: a base pipeline (the TI2V DiT over the Wan 2.2 VAE,
``--expand-timesteps``) generating with and without an image, against diffusers' own WanImageToVideoPipeline
/ WanPipeline with ``expand_timesteps=True`` on the same weights, umT5, image file and noise: its text
encoding, image encoding (``prepare_latents``), per-token timesteps and final first-frame replacement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
from PIL import Image

import megavg.models
from megavg.infer.export import main as export
from megavg.infer.runner import Pipeline
from megavg.infer.video_io import to_uint8
from megavg.models.wan.state_dict_adapter import to_megavg
from megavg.utils.errors import UserError
from tests.infer.test_sampling import assert_rel_close
from tests.infer.test_teacher_vae_wan22 import tiny_wan22_vae
from tests.infer.tiny_pipeline import write_png
from tests.models.wan_reference import random_diffusers

SIZE, FRAMES, STEPS, GUIDANCE, SHIFT, SEED = (32, 64), 9, 4, 4.0, 5.0, 3
PROMPT = "a red fox in snow"


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory, tiny_parts):
    """(pipeline folder, diffusers transformer, text folder, image path) of a tiny TI2V base pipeline."""
    root = tmp_path_factory.mktemp("ti2v")
    ref = random_diffusers("wan-tiny-ti2v", seed=1)
    dit = megavg.models.build("wan-tiny-ti2v").eval()
    dit.load_state_dict(to_megavg(ref.state_dict()), strict=True)
    dit.save(root / "dit")
    tiny_wan22_vae(root)  # root/vae: a random Wan 2.2 VAE (patchify 2, 16x), 12 channels as the DiT
    common = ["--transformer", str(root / "dit"), "--vae", str(root / "vae"), "--text-encoder"]
    export(
        [
            *common,
            str(tiny_parts["text"]),
            "--dtype",
            "fp32",
            "--expand-timesteps",
            "--out",
            str(root / "pipe"),
        ]
    )
    write_png(root / "first.png", *SIZE)
    return root / "pipe", ref, tiny_parts["text"], root / "first.png"


@pytest.fixture(autouse=True)
def no_ftfy(monkeypatch):
    """diffusers' Wan pipelines clean prompts with ftfy (not installed here; its fix is a no-op on the
    plain ASCII prompts used): keep their html-unescape and whitespace cleaning, skip ftfy."""
    import html

    from diffusers.pipelines.wan import pipeline_wan, pipeline_wan_i2v

    for module in (pipeline_wan, pipeline_wan_i2v):
        monkeypatch.setattr(module, "basic_clean", lambda text: html.unescape(html.unescape(text)).strip())


def reference(cls, ref, text_folder, vae_folder, **kwargs) -> WanPipeline:
    """diffusers' pipeline on the same transformer, umT5 + tokenizer and VAE, expand_timesteps=True."""
    return cls(
        tokenizer=transformers.AutoTokenizer.from_pretrained(text_folder),
        text_encoder=transformers.UMT5EncoderModel.from_pretrained(text_folder).eval(),
        vae=AutoencoderKLWan.from_pretrained(vae_folder).eval(),
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT
        ),
        transformer=ref,
        expand_timesteps=True,
        **kwargs,
    )


def run_both(pipe_folder, ref, text_folder, image=None):
    """(megavg's latents and frames, diffusers' latents) for the same request."""
    pipe = Pipeline.from_pretrained(pipe_folder, device="cpu", dtype="fp32")
    frames = pipe(PROMPT, None if image is None else str(image), size=SIZE, frames=FRAMES, steps=STEPS,
                  guidance=GUIDANCE, seed=SEED)  # fmt: skip
    latents = pipe.last_run["latents"]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(SEED))  # the runner's draw
    cls, extra = (WanPipeline, {}) if image is None else (WanImageToVideoPipeline, {"image_encoder": None})
    diffusers_pipe = reference(cls, ref, text_folder, pipe_folder / "vae", **extra)
    given = {} if image is None else {"image": Image.open(image).convert("RGB")}
    expected = diffusers_pipe(
        prompt=PROMPT, negative_prompt="", latents=noise, height=SIZE[0], width=SIZE[1], num_frames=FRAMES,
        num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="latent", **given,
    ).frames  # fmt: skip
    return latents, frames, expected, diffusers_pipe.vae


def test_ti2v_image_to_video_matches_diffusers(ti2v):
    pipe_folder, ref, text_folder, image = ti2v
    latents, frames, expected, vae = run_both(pipe_folder, ref, text_folder, image)
    assert latents.shape == (1, 12, 3, 2, 4)  # 9 frames -> 3 latent frames; 16x spatial
    assert_rel_close(latents, expected)
    print(f"TI2V image-to-video: max abs diff {(latents - expected).abs().max().item():.2e}")
    # the decode: diffusers' own de-normalisation ((x / (1 / std)) + mean) and AutoencoderKLWan.decode
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(expected / inv_std + mean, return_dict=False)[0]
    assert frames.shape == (FRAMES, *SIZE, 3)
    assert np.abs(frames.astype(int) - to_uint8(video).astype(int)).max() <= 1


def test_ti2v_text_to_video_matches_diffusers(ti2v):
    pipe_folder, ref, text_folder, _ = ti2v
    latents, _, expected, _ = run_both(pipe_folder, ref, text_folder)
    assert_rel_close(latents, expected)


def test_expand_timesteps_needs_the_wan22_vae(tiny_parts, tmp_path):
    with pytest.raises(UserError, match="expand_timesteps .*Wan 2.2 VAE"):
        export(["--transformer", str(tiny_parts["t2v"]), "--vae", str(tiny_parts["vae"]), "--text-encoder",
                str(tiny_parts["text"]), "--expand-timesteps", "--out", str(tmp_path / "p")])  # fmt: skip
    assert not (tmp_path / "p").exists()
