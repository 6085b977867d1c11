"""The stages of one generation: load, encode the inputs, denoise, decode (:mod:`megavg.infer.runner`).

Each function is one stage of DC-VideoGen inference (DESIGN.md §13): umT5 text encoding (512 tokens, zero
padded), for I2V the CLIP image tokens and the DC-AE-V first-frame condition
(:mod:`megavg.infer.conditioning`), denoising with :func:`megavg.infer.sampling.sample`, and the DC-AE-V
decode streamed chunk by chunk (tile by tile for large frames) into a writer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from megavg.infer.distributed import Layout, split_decode
from megavg.infer.pipeline import PipelineFolder
from megavg.infer.request import Request
from megavg.infer.stage_log import StageLog
from megavg.infer.video_io import to_uint8
from megavg.utils.errors import UserError


@dataclass
class RunOptions:
    """How to run a request (none of it changes the video, except the approximate ``cache``)."""

    progress: bool = True
    cfg_batch: bool | None = None  # cond + uncond as one batch; None: when it fits in memory
    compile: bool = False  # torch.compile each transformer block
    cache: str = "none"  # step cache: none / fbcache / teacache
    cache_threshold: float = 0.05
    decode_tile: int = 0  # latent pixels per decode tile (0: automatic)


class Placement:
    """Where models live: on the device throughout, or (``offload``) on the CPU except inside ``use``."""

    def __init__(self, device: torch.device, offload: bool):
        self.device, self.offload = device, offload
        self.home = torch.device("cpu") if offload else device

    @contextlib.contextmanager
    def use(self, module):
        module.to(self.device)
        try:
            yield module
        finally:
            if self.offload:
                module.to(self.home)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()


@dataclass
class Models:
    text: object
    dit: nn.Module | None
    vae: nn.Module
    image: object | None


def load_text_encoder(pipe: PipelineFolder, place: Placement, dtype: torch.dtype):
    from megavg.infer.text import TextEncoder

    m = pipe.manifest
    tokenizer = pipe.component(m.tokenizer) or None
    return TextEncoder(pipe.component(m.text_encoder), str(place.home), dtype, m.text_max_length, tokenizer)


def load_transformer(pipe: PipelineFolder, req: Request, place: Placement, dtype: torch.dtype) -> nn.Module:
    """The DiT, loaded once the inputs are encoded: never on the device while an encoder runs (the 4K I2V
    condition encode needs the memory)."""
    return pipe.load_transformer(i2v=req.image is not None, dtype=dtype).to(place.home)


def load_image_encoder(pipe: PipelineFolder):
    entry = pipe.component(pipe.manifest.image_encoder)
    if not entry:
        raise UserError(f"{pipe.root}: this pipeline has no image encoder (needed for --image)")
    return load_image_encoder_from(entry)


def load_image_encoder_from(entry: str):
    """The CLIP image encoder at ``entry``: Wan's CLIP ``.pth`` or a transformers folder / hub id."""
    from megavg.infer.conditioning import ImageEncoder

    if entry.endswith(".pth"):
        from megavg.infer.clip_weights import image_encoder_from_wan_clip

        return image_encoder_from_wan_clip(entry)
    return ImageEncoder(entry)


def encode_inputs(models: Models, req: Request, place: Placement, stages: StageLog) -> dict:
    """Text context (and negative), and for I2V the CLIP tokens and the first-frame condition."""
    from megavg.infer.conditioning import i2v_condition

    out = {"text": None, "negative_text": None, "image": None, "condition": None}
    with stages.stage("text encode"), place.use(models.text):
        out["text"] = models.text.padded([req.prompt])  # [1, 512, D], zeros after the prompt
        if req.guidance > 1.0:
            out["negative_text"] = models.text.padded([req.negative])
    models.text = None  # not needed again by this request
    if req.image is not None:
        with stages.stage("image encode"), place.use(models.image):
            out["image"] = models.image(req.image)  # CLIP sees the whole image, as in the authors' pipeline
        models.image = None
        with stages.stage("condition"), place.use(models.vae):
            frame = F.interpolate(req.image, size=req.size, mode="bicubic", antialias=True).clamp(-1, 1)
            out["condition"] = i2v_condition(models.vae, frame, req.frames)
    return out


def initial_noise(models: Models, req: Request, seed: int) -> torch.Tensor:
    """[1, C, T', h, w] standard normal noise from a CPU generator (the same on every device)."""
    vae = models.vae.args
    t, s = vae.temporal_compression, vae.spatial_compression
    shape = (1, models.dit.args.out_channels, req.frames // t, req.size[0] // s, req.size[1] // s)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def denoise(models: Models, req: Request, inputs: dict, noise, options: RunOptions, layout: Layout) -> tuple:
    """The sampler as ``options`` configure it (CFG batching, compile, cache, SP / CFG-parallel groups)."""
    from megavg.infer.sampling import sample

    if layout.sp_group is not None:
        from megavg.models.wan.parallelize import apply_ulysses

        apply_ulysses(models.dit, layout.sp_group)
    stats: dict = {}
    latents = sample(
        models.dit, noise, inputs["text"], inputs["negative_text"], steps=req.steps,
        guidance=req.guidance, shift=req.shift, solver=req.solver, condition=inputs["condition"],
        image=inputs["image"], progress=options.progress and layout.is_main,
        cfg_batch=options.cfg_batch, compile=options.compile,
        cache=options.cache, cache_threshold=options.cache_threshold, cfg_group=layout.cfg_group,
        sp_group=layout.sp_group, stats=stats,
    )  # fmt: skip
    return latents, stats


def auto_tile(latent_hw: tuple[int, int], requested: int) -> int:
    """Latent tile size for decoding: the request, or 0 (whole frame) up to 64x64 latents (2048 px at f32)."""
    if requested:
        return requested
    return 0 if max(latent_hw) <= 64 else 48


def decode_to_video(vae, latents: torch.Tensor, writer, req: Request, tile: int) -> int:
    """Stream latents (already divided by the scaling factor) through DC-AE-V into ``writer``; returns the
    number of frames written (the requested count)."""
    from megavg.infer.decode import stream_decode_tiled

    param = next(vae.parameters())
    written = 0
    for video in stream_decode_tiled(vae, latents.to(param.device, param.dtype), tile):
        piece = video[:, :, : req.frames - written, : req.size[0], : req.size[1]].float().cpu()
        writer.write(piece)
        written += piece.shape[2]
    return written


def decode(models: Models, latents: torch.Tensor, req: Request, tile: int, layout: Layout, writer) -> int:
    """DC-AE-V decoding into ``writer`` (rank 0's; under several processes all ranks decode and the
    others pass None)."""
    tile = auto_tile(latents.shape[-2:], tile)
    if layout.world == 1:
        return decode_to_video(models.vae, latents, writer, req, tile)
    written = [0]

    def write(video: torch.Tensor) -> None:
        piece = video[:, :, : req.frames - written[0], : req.size[0], : req.size[1]].float().cpu()
        writer.write(piece)
        written[0] += piece.shape[2]

    param = next(models.vae.parameters())
    split_decode(models.vae, latents.to(param.device, param.dtype), tile, layout, write)
    return written[0]


class FrameCollector:
    """A writer that keeps the frames: the uint8 [T, H, W, 3] a video file would hold (:func:`to_uint8`)."""

    def __init__(self):
        self.pieces: list = []

    def write(self, piece: torch.Tensor) -> None:
        self.pieces.append(to_uint8(piece))

    def frames(self):
        import numpy as np

        return np.concatenate(self.pieces)
