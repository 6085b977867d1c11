"""What to generate: a :class:`Request`, built from user input and checked before any weight is read.

Sizes and frame counts are checked against the model's grid (read from the config files alone); the
I2V output size keeps the image's aspect at the requested area (DESIGN.md §13).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megavg.infer.pipeline import PipelineFolder
from megavg.infer.wan_vae import WanVAEArgs
from megavg.utils.errors import UserError
from megavg.utils.logging import get_logger

log = get_logger("megavg.infer.generate")
DEFAULT_SIZE, DEFAULT_FRAMES = (704, 1280), 80  # 720p, 80 frames (and the pipeline's steps, 50)


@dataclass
class Request:
    """Everything a generation needs, validated."""

    prompt: str
    negative: str
    image: torch.Tensor | None  # [1, 3, H, W] float32 in [-1, 1]
    size: tuple[int, int]
    frames: int
    steps: int
    guidance: float
    shift: float
    solver: str
    fps: int
    guidance_2: float | None = None  # two-expert pipelines: the low-noise expert's guidance
    clip_tokens: bool = False  # the DiT takes CLIP image tokens (Wan 2.1 I2V; Wan 2.2 experts do not)
    boundary: float | None = None  # two-expert pipelines: the switch (diffusers' boundary_ratio)
    first_frame: bool = False  # TI2V (expand_timesteps): the image is the DiT's clean latent frame 0


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """First frame of an image (or video) file as [1, 3, H, W] float32 in [-1, 1] (decoded by PyAV)."""
    import av

    if not Path(path).is_file():
        raise UserError(f"{path}: no such image file")
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: not an image")
            frame = next(container.decode(video=0), None)
    except av.error.FFmpegError as err:
        raise UserError(f"{path}: not a decodable image ({err})") from None
    if frame is None:
        raise UserError(f"{path}: not a decodable image (no picture in it)")
    return image_from_array(frame.to_ndarray(format="rgb24"))


def image_from_array(pixels) -> torch.Tensor:
    """uint8 pixels [H, W, 3] (numpy, torch, or anything ``np.asarray`` takes, e.g. a PIL image) as
    [1, 3, H, W] float32 in [-1, 1]."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise UserError(f"image: expected uint8 pixels [H, W, 3], got {array.dtype} {list(array.shape)}")
    pixels = torch.from_numpy(np.ascontiguousarray(array)).float()  # H, W, 3
    return (pixels / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)


def image_size_for(image_hw: tuple[int, int], area_hw: tuple[int, int], multiple: int) -> tuple[int, int]:
    """Output size of I2V: the image's aspect at the area of ``area_hw``, rounded to ``multiple``."""
    ih, iw = image_hw
    area = area_hw[0] * area_hw[1]
    h, w = math.sqrt(area * ih / iw), math.sqrt(area * iw / ih)
    return max(multiple, round(h / multiple) * multiple), max(multiple, round(w / multiple) * multiple)


def grid_frames(frames: int, multiple: int, causal: bool = False) -> int:
    """Frames rounded down to ``multiple`` (at least one multiple), with a one-line note when changed;
    ``causal`` (a Wan VAE: frame 0 alone in latent frame 0) to ``multiple`` k + 1 (at least 1)."""
    if frames < 1:
        raise UserError(f"--frames {frames}: must be positive")
    if causal:
        rounded = (frames - 1) // multiple * multiple + 1
        if rounded != frames:
            log.warning("--frames %d is not %dk+1 (Wan VAE): generating %d frames", frames, multiple, rounded)
        return rounded
    rounded = max(multiple, frames // multiple * multiple)
    if rounded != frames:
        log.warning("--frames %d is not a multiple of %d: generating %d frames", frames, multiple, rounded)
    return rounded


def check_device(name: str | torch.device) -> torch.device:
    """``name`` as a device; UserError when it is malformed or CUDA is asked for on a machine without it."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def make_request(
    pipe: PipelineFolder,
    prompt: str,
    image: torch.Tensor | None = None,
    *,
    negative_prompt: str | None = None,
    size: tuple[int, int] = DEFAULT_SIZE,
    frames: int = DEFAULT_FRAMES,
    steps: int | None = None,
    guidance: float | None = None,
    shift: float | None = None,
    solver: str | None = None,
    fps: int | None = None,
    guidance_2: float | None = None,
) -> Request:
    """A checked request for ``pipe``; None means the pipeline's default (``pipeline.json`` sampler).
    ``guidance_2``: a two-expert pipeline's low-noise guidance (default: the pipeline's, else
    ``guidance``)."""
    if not prompt.strip():
        raise UserError("--prompt: the prompt is empty")
    dit, vae = pipe.transformer_args(i2v=image is not None), pipe.vae_args()
    multiple = vae.spatial_compression * dit.patch_size[1]
    size = tuple(size)
    if image is not None:
        fitted = image_size_for(tuple(image.shape[-2:]), size, multiple)
        if fitted != size:
            log.warning("--size %d %d with --image: generating %dx%d (the image's %dx%d aspect at that area, "
                        "multiples of %d)", *size, *fitted, *image.shape[-2:], multiple)  # fmt: skip
        size = fitted
    elif any(n <= 0 or n % multiple for n in size):
        raise UserError(
            f"--size {size[0]} {size[1]}: must be positive multiples of {multiple} for this model"
        )
    d = pipe.manifest.sampler
    steps = steps if steps is not None else d.steps
    if steps < 1:
        raise UserError(f"--steps {steps}: must be at least 1")
    guidance = guidance if guidance is not None else d.guidance
    guidance_2 = guidance_2 if guidance_2 is not None else d.guidance_2
    if guidance_2 is not None and not pipe.manifest.transformer_2:
        raise UserError(f"--guidance-2: {pipe.root} has one transformer (no low-noise expert)")
    return Request(
        prompt=prompt,
        negative=d.negative_prompt if negative_prompt is None else negative_prompt,
        image=image,
        size=size,
        frames=grid_frames(frames, vae.temporal_compression * dit.patch_size[0], isinstance(vae, WanVAEArgs)),
        steps=steps,
        guidance=guidance,
        shift=shift if shift is not None else d.shift,
        solver=solver or d.solver,
        fps=fps or d.fps,
        guidance_2=guidance if pipe.manifest.transformer_2 and guidance_2 is None else guidance_2,
        clip_tokens=dit.is_i2v,
        boundary=pipe.manifest.boundary,
        first_frame=image is not None and pipe.manifest.expand_timesteps,
    )
