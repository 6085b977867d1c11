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
from megavg.infer.wan_vae import WanVAE, WanVAEArgs
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


class ExpertPlacement:
    """Where the two Wan 2.2 experts sit while denoising: both on the device when they fit there (always
    on the CPU), else only the active one (``activate``, the sampler's hook) with the other at home on the
    CPU, so a GPU holds one 14B expert at a time. One transformer: it is simply on the device."""

    def __init__(self, place: Placement, experts: list[nn.Module], one_at_a_time: bool):
        self.place, self.experts, self.one_at_a_time = place, experts, one_at_a_time
        self.home = torch.device("cpu") if one_at_a_time else place.home

    def describe(self) -> str:
        if len(self.experts) == 1:
            return "one transformer"
        held = "one expert at a time (the other on the CPU)" if self.one_at_a_time else "both experts"
        return f"{held} on {self.place.device}"

    def activate(self, model: nn.Module) -> None:
        if self.one_at_a_time:
            for other in self.experts:
                if other is not model:
                    other.to(self.home)
            if self.place.device.type == "cuda":
                torch.cuda.empty_cache()
        model.to(self.place.device)

    @contextlib.contextmanager
    def denoising(self):
        if not self.one_at_a_time:
            for model in self.experts:
                model.to(self.place.device)
        try:
            yield self
        finally:
            for model in self.experts:
                model.to(self.home)


def experts_fit(experts: list[nn.Module], device: torch.device) -> bool:
    """Whether all experts' weights fit on ``device`` together, with a quarter of its free memory left for
    activations (always on the CPU)."""
    if device.type != "cuda" or len(experts) == 1:
        return True
    weights = sum(p.numel() * p.element_size() for m in experts for p in m.parameters())
    on_device = sum(p.numel() * p.element_size() for m in experts for p in m.parameters() if p.is_cuda)
    free, _ = torch.cuda.mem_get_info(device)
    return weights - on_device < 0.75 * free


@dataclass
class Models:
    text: object
    dit: nn.Module | None
    vae: nn.Module
    image: object | None
    dit_2: nn.Module | None = None  # Wan 2.2 A14B: the low-noise expert


def load_text_encoder(pipe: PipelineFolder, place: Placement, dtype: torch.dtype):
    from megavg.infer.text import TextEncoder

    m = pipe.manifest
    tokenizer = pipe.component(m.tokenizer) or None
    return TextEncoder(pipe.component(m.text_encoder), str(place.home), dtype, m.text_max_length, tokenizer)


def load_transformer(pipe: PipelineFolder, req: Request, place: Placement, dtype: torch.dtype) -> nn.Module:
    """The DiT, loaded once the inputs are encoded: never on the device while an encoder runs (the 4K I2V
    condition encode needs the memory)."""
    return pipe.load_transformer(i2v=req.image is not None, dtype=dtype).to(place.home)


def load_transformer_2(pipe: PipelineFolder, dtype: torch.dtype) -> nn.Module | None:
    """A two-expert pipeline's low-noise expert, on the CPU (:class:`ExpertPlacement` places it)."""
    return pipe.load_transformer_2(dtype=dtype)


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
    """Text context (and negative), and for I2V the CLIP tokens and the first-frame condition (TI2V: the
    image's latent frame, ``first_frame``)."""
    out = {"text": None, "negative_text": None, "image": None, "condition": None, "first_frame": None}
    with stages.stage("text encode"), place.use(models.text):
        out["text"] = models.text.padded([req.prompt])  # [1, 512, D], zeros after the prompt
        if max(req.guidance, req.guidance_2 or 0.0) > 1.0:
            out["negative_text"] = models.text.padded([req.negative])
    models.text = None  # not needed again by this request
    if req.image is not None and req.clip_tokens:
        with stages.stage("image encode"), place.use(models.image):
            out["image"] = models.image(req.image)  # CLIP sees the whole image, as in the authors' pipeline
        models.image = None
    if req.image is not None:
        with stages.stage("condition"), place.use(models.vae):
            frame = F.interpolate(req.image, size=req.size, mode="bicubic", antialias=True).clamp(-1, 1)
            key = "first_frame" if req.first_frame else "condition"
            out[key] = image_condition(models.vae, frame, req.frames)
    return out


def image_condition(vae, frame: torch.Tensor, frames: int) -> torch.Tensor:
    """The first-frame condition of ``frame`` [1, 3, H, W] (at the output size) in ``vae``'s space: a Wan
    VAE's (:meth:`~megavg.infer.wan_vae.WanVAE.condition`, the function AE-Adapt-V's teacher uses; TI2V:
    the image's latent frame) or DC-AE-V's (:func:`~megavg.infer.conditioning.i2v_condition`)."""
    from megavg.infer.conditioning import i2v_condition

    if isinstance(vae, WanVAE):
        return vae.condition(frame, frames)
    return i2v_condition(vae, frame, frames)


def initial_noise(models: Models, req: Request, seed: int) -> torch.Tensor:
    """[1, C, T', h, w] standard normal noise from a CPU generator (the same on every device)."""
    vae = models.vae.args
    t, s = vae.temporal_compression, vae.spatial_compression
    latent_frames = vae.latent_frames(req.frames) if isinstance(vae, WanVAEArgs) else req.frames // t
    shape = (1, models.dit.args.out_channels, latent_frames, req.size[0] // s, req.size[1] // s)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def denoise(
    models: Models, req: Request, inputs: dict, noise, options: RunOptions, layout: Layout,
    experts: ExpertPlacement | None = None,
) -> tuple:  # fmt: skip
    """The sampler as ``options`` configure it (CFG batching, compile, cache, SP / CFG-parallel groups;
    two experts placed by ``experts``)."""
    from megavg.infer.sampling import sample

    if layout.sp_group is not None:
        from megavg.models.wan.parallelize import apply_ulysses

        for dit in (models.dit, models.dit_2):
            if dit is not None:
                apply_ulysses(dit, layout.sp_group)
    two = {}
    if models.dit_2 is not None:
        two = dict(model_2=models.dit_2, boundary=req.boundary, guidance_2=req.guidance_2,
                   activate=None if experts is None else experts.activate)  # fmt: skip
    stats: dict = {}
    latents = sample(
        models.dit, noise, inputs["text"], inputs["negative_text"], steps=req.steps,
        guidance=req.guidance, shift=req.shift, solver=req.solver, condition=inputs["condition"],
        image=inputs["image"], first_frame=inputs["first_frame"],
        progress=options.progress and layout.is_main, cfg_batch=options.cfg_batch, compile=options.compile,
        cache=options.cache, cache_threshold=options.cache_threshold, cfg_group=layout.cfg_group,
        sp_group=layout.sp_group, stats=stats, **two,
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
    if isinstance(models.vae, WanVAE):  # a base pipeline: rank 0 decodes the whole clip
        return 0 if writer is None else decode_wan(models.vae, latents, writer, req)
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


def decode_wan(vae: WanVAE, latents: torch.Tensor, writer, req: Request) -> int:
    """A Wan VAE's decode of the normalised ``latents`` into ``writer``, in one piece (diffusers decodes
    latent frame by latent frame, its causal cache carried); returns the frames written."""
    video = vae.decode(latents)[:, :, : req.frames, : req.size[0], : req.size[1]].float().cpu()
    writer.write(video)
    return video.shape[2]


class FrameCollector:
    """A writer that keeps the frames: the uint8 [T, H, W, 3] a video file would hold (:func:`to_uint8`)."""

    def __init__(self):
        self.pieces: list = []

    def write(self, piece: torch.Tensor) -> None:
        self.pieces.append(to_uint8(piece))

    def frames(self):
        import numpy as np

        return np.concatenate(self.pieces)
