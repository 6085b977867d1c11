"""Text-to-video and image-to-video on one device with a DC-VideoGen pipeline.

    python -m megavg.infer.generate PIPELINE --prompt "a red fox in snow" --out fox.mp4
    python -m megavg.infer.generate PIPELINE --prompt-file p.txt --image first.png --out i2v.mp4 --offload

``PIPELINE`` is a folder written by ``tools/export_pipeline.py`` or the released DC-VideoGen-Wan2.1-14B
folder (:mod:`megavg.infer.pipeline`). Stages: umT5 text encoding (512 tokens, zero padded), for I2V the
CLIP image tokens and the DC-AE-V first-frame condition (:mod:`megavg.infer.conditioning`), denoising
with :func:`megavg.infer.sampling.sample`, then DC-AE-V decoding streamed chunk by chunk (and tile by tile
for large frames) straight into the MP4, which appears only when complete. ``--offload`` keeps every
model on the CPU except while its stage runs. Prints time and peak memory per stage.

Bad input (missing or wrong pipeline folder, an undecodable image, an empty prompt file, a size off the
model's grid) is one ``error:`` line and exit code 2, before any weight is read.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from megavg.infer.distributed import Layout, setup, split_decode, teardown
from megavg.infer.pipeline import Pipeline, open_pipeline
from megavg.infer.step_cache import METHODS as CACHE_METHODS
from megavg.infer.video_io import CONTAINERS, VideoWriter, check_output
from megavg.utils.errors import UserError, run_cli
from megavg.utils.logging import disable_library_bars, get_logger
from megavg.utils.memory import peak_rss_mib, reset_peak_rss

log = get_logger("megavg.infer.generate")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GPU_DEFAULTS = {"size": (704, 1280), "frames": 80}  # and the pipeline's steps (50 for the release)
SMALL_RUN = "--size 256 448 --frames 16 --steps 20"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one error line and exit 2, like every other bad input
        raise UserError(f"generate: {message}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m megavg.infer.generate", description=__doc__.split("\n")[0])
    p.add_argument("pipeline", help="pipeline folder (export_pipeline.py) or the released DC-VideoGen folder")
    p.add_argument("--prompt", help="text prompt")
    p.add_argument("--prompt-file", help="file holding the prompt")
    p.add_argument("--negative-prompt", default=None,
                   help='negative prompt (default: the pipeline\'s, "": the empty caption, the null '
                        "condition training's text dropout uses)")  # fmt: skip
    p.add_argument("--image", help="first frame (PNG/JPEG...): image-to-video")
    p.add_argument("--out", required=True, help=f"output video: {', '.join(CONTAINERS)} (by the extension)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=GPU_DEFAULTS["size"],
                   help="frame size; with --image the area: the image's aspect is kept, rounded to the "
                        "model's grid (said before sampling)")  # fmt: skip
    p.add_argument("--frames", type=int, default=GPU_DEFAULTS["frames"],
                   help="frames, rounded down to a multiple of the model's temporal grid (4), at least one "
                        "multiple: 3 becomes 4, 10 becomes 8 (said before sampling)")  # fmt: skip
    p.add_argument("--steps", type=int, help="denoising steps (default: the pipeline's, 50)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 5.0)")
    p.add_argument("--guidance-2", type=float,
                   help="two-expert pipelines (Wan 2.2 A14B): the low-noise expert's guidance (default: the "
                        "pipeline's, else --guidance)")  # fmt: skip
    p.add_argument("--shift", type=float, help="flow shift (default 5.0)")
    p.add_argument("--solver", choices=("unipc", "euler"), help="solver (default unipc)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fps", type=int, help="frame rate of the MP4 (default 16)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="DiT, DC-AE-V and umT5 dtype")
    p.add_argument("--offload", action="store_true", help="models on the GPU only while their stage runs")
    p.add_argument("--decode-tile", type=int, default=0,
                   help="decode in spatial tiles of this many latent pixels (0: automatic)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    speed = p.add_argument_group("speed (see docs/generation_speed.md)")
    speed.add_argument("--cfg-batch", choices=("auto", "on", "off"), default="auto",
                       help="run cond + uncond as one batch (auto: when it fits in memory)")  # fmt: skip
    speed.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    speed.add_argument("--cache", choices=CACHE_METHODS, default="none",
                       help="skip the block stack on steps that barely change (approximate)")  # fmt: skip
    speed.add_argument(
        "--cache-threshold", type=float, default=0.05, help="relative change under which to skip"
    )
    speed.add_argument("--sp", type=int, default=1, help="Ulysses sequence-parallel ranks (under torchrun)")
    speed.add_argument("--cfg-parallel", action="store_true",
                       help="cond and uncond branch on two rank groups (under torchrun)")  # fmt: skip
    return p.parse_args(argv)


# ---- inputs, checked before any weight is read ------------------------------------------------------


def read_prompt(args: argparse.Namespace) -> str:
    if (args.prompt is None) == (args.prompt_file is None):
        raise UserError("generate: give exactly one of --prompt and --prompt-file")
    if args.prompt_file is None:
        text = args.prompt
    else:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise UserError(f"{path}: no such prompt file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"{path}: unreadable prompt file ({err})") from None
    text = text.strip()
    if not text:
        raise UserError(f"{args.prompt_file or '--prompt'}: the prompt is empty")
    return text


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
    pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).float()  # H, W, 3
    return (pixels / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)


def image_size_for(image_hw: tuple[int, int], area_hw: tuple[int, int], multiple: int) -> tuple[int, int]:
    """Output size of I2V: the image's aspect at the area of ``area_hw``, rounded to ``multiple``."""
    ih, iw = image_hw
    area = area_hw[0] * area_hw[1]
    h, w = math.sqrt(area * ih / iw), math.sqrt(area * iw / ih)
    return max(multiple, round(h / multiple) * multiple), max(multiple, round(w / multiple) * multiple)


def grid_frames(frames: int, multiple: int) -> int:
    """Frames rounded down to ``multiple`` (at least one multiple), with a one-line note when changed."""
    if frames < 1:
        raise UserError(f"--frames {frames}: must be positive")
    rounded = max(multiple, frames // multiple * multiple)
    if rounded != frames:
        log.warning("--frames %d is not a multiple of %d: generating %d frames", frames, multiple, rounded)
    return rounded


def warn_cpu_defaults(args: argparse.Namespace, steps: int) -> None:
    """One warning when a CPU run keeps any of the GPU-sized defaults (size, frames, the pipeline's steps)."""
    if torch.device(args.device).type != "cpu":
        return
    kept = [f"--size {args.size[0]} {args.size[1]}"] if tuple(args.size) == GPU_DEFAULTS["size"] else []
    kept += [f"--frames {args.frames}"] if args.frames == GPU_DEFAULTS["frames"] else []
    kept += [f"--steps {steps}"] if args.steps is None else []
    if kept:
        log.warning(
            "generate on CPU with GPU-sized defaults (%s: minutes on an H100, hours here); a small CPU "
            "run looks like %s (over 100x less work)", ", ".join(kept), SMALL_RUN
        )  # fmt: skip


@dataclass
class Request:
    """Everything a generation needs, validated."""

    prompt: str
    negative: str
    image: torch.Tensor | None
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


def check_device(name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")


def build_request(args: argparse.Namespace, pipe: Pipeline) -> Request:
    check_device(args.device)
    check_output(args.out)
    prompt = read_prompt(args)
    image = load_image(args.image) if args.image else None
    dit, vae = pipe.transformer_args(i2v=image is not None), pipe.vae_args()
    multiple = vae.spatial_compression * dit.patch_size[1]
    if image is not None:
        size = image_size_for(tuple(image.shape[-2:]), tuple(args.size), multiple)
        if size != tuple(args.size):
            log.warning("--size %d %d with --image: generating %dx%d (the image's %dx%d aspect at that area, "
                        "multiples of %d)", *args.size, *size, *image.shape[-2:], multiple)  # fmt: skip
    else:
        size = tuple(args.size)
        if any(n <= 0 or n % multiple for n in size):
            raise UserError(
                f"--size {size[0]} {size[1]}: must be positive multiples of {multiple} for this model"
            )
    d = pipe.manifest.sampler
    steps = args.steps if args.steps is not None else d.steps
    if steps < 1:
        raise UserError(f"--steps {steps}: must be at least 1")
    warn_cpu_defaults(args, steps)
    guidance = args.guidance if args.guidance is not None else d.guidance
    guidance_2 = args.guidance_2 if args.guidance_2 is not None else d.guidance_2
    if guidance_2 is not None and not pipe.manifest.transformer_2:
        raise UserError(f"--guidance-2: {pipe.root} has one transformer (no low-noise expert)")
    return Request(
        prompt=prompt,
        negative=d.negative_prompt if args.negative_prompt is None else args.negative_prompt,
        image=image,
        size=size,
        frames=grid_frames(args.frames, vae.temporal_compression * dit.patch_size[0]),
        steps=steps,
        guidance=guidance,
        shift=args.shift if args.shift is not None else d.shift,
        solver=args.solver or d.solver,
        fps=args.fps or d.fps,
        guidance_2=guidance if pipe.manifest.transformer_2 and guidance_2 is None else guidance_2,
        clip_tokens=dit.is_i2v,
        boundary=pipe.manifest.boundary,
    )


# ---- stages -----------------------------------------------------------------------------------------


@dataclass
class StageLog:
    """Wall time and peak memory (GPU: allocated; CPU: resident set) of each stage."""

    device: torch.device
    rows: list[tuple[str, float, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()
        start = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = peak_rss_mib()
        self.rows.append((name, time.perf_counter() - start, peak))

    def report(self) -> str:
        kind = "GPU allocated" if self.device.type == "cuda" else "host RSS"
        lines = [f"{'stage':<14}{'seconds':>10}{'peak MiB':>12}  ({kind})"]
        lines += [f"{name:<14}{sec:>10.2f}{peak:>12.0f}" for name, sec, peak in self.rows]
        return "\n".join(lines)


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
                model.to(self.place.home if not self.one_at_a_time else self.home)


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


def load_models(pipe: Pipeline, req: Request, place: Placement, dtype: torch.dtype) -> Models:
    from megavg.infer.text import TextEncoder

    m = pipe.manifest
    tokenizer = pipe.component(m.tokenizer) or None
    text = TextEncoder(pipe.component(m.text_encoder), str(place.home), dtype, m.text_max_length, tokenizer)
    image = None
    if req.image is not None and req.clip_tokens:
        image = load_image_encoder(pipe)
        image.to(place.home)
    vae = pipe.load_vae(dtype=dtype).to(place.home)
    return Models(text, None, vae, image)  # the DiT comes after the encoders (load_transformer)


def load_transformer(pipe: Pipeline, req: Request, place: Placement, dtype: torch.dtype) -> nn.Module:
    """The DiT, loaded once the inputs are encoded: never on the device while an encoder runs (the 4K I2V
    condition encode needs the memory)."""
    return pipe.load_transformer(i2v=req.image is not None, dtype=dtype).to(place.home)


def load_transformer_2(pipe: Pipeline, dtype: torch.dtype) -> nn.Module | None:
    """A two-expert pipeline's low-noise expert, on the CPU (:class:`ExpertPlacement` places it)."""
    return pipe.load_transformer_2(dtype=dtype)


def load_image_encoder(pipe: Pipeline):
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


def decode_to_video(vae, latents: torch.Tensor, writer: VideoWriter, req: Request, tile: int) -> int:
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


def auto_tile(latent_hw: tuple[int, int], requested: int) -> int:
    """Latent tile size for decoding: the request, or 0 (whole frame) up to 64x64 latents (2048 px at f32)."""
    if requested:
        return requested
    return 0 if max(latent_hw) <= 64 else 48


def encode_inputs(models: Models, req: Request, place: Placement, stages: StageLog) -> dict:
    """Text context (and negative), and for I2V the CLIP tokens and the first-frame condition."""
    from megavg.infer.conditioning import i2v_condition

    out = {"text": None, "negative_text": None, "image": None, "condition": None}
    with stages.stage("text encode"), place.use(models.text):
        out["text"] = models.text.padded([req.prompt])  # [1, 512, D], zeros after the prompt
        if max(req.guidance, req.guidance_2 or 0.0) > 1.0:
            out["negative_text"] = models.text.padded([req.negative])
    models.text = None  # not needed again: free it
    if req.image is not None and req.clip_tokens:
        with stages.stage("image encode"), place.use(models.image):
            out["image"] = models.image(req.image)  # CLIP sees the whole image, as in the authors' pipeline
        models.image = None
    if req.image is not None:
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


def denoise(models: Models, req: Request, inputs: dict, noise, args, layout: Layout, experts=None) -> tuple:
    """The sampler as ``args`` configure it (CFG batching, compile, cache, SP / CFG-parallel groups)."""
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
        image=inputs["image"], progress=not args.no_progress and layout.is_main,
        cfg_batch={"auto": None, "on": True, "off": False}[args.cfg_batch], compile=args.compile,
        cache=args.cache, cache_threshold=args.cache_threshold, cfg_group=layout.cfg_group,
        sp_group=layout.sp_group, stats=stats, **two,
    )  # fmt: skip
    return latents, stats


def decode(models: Models, latents: torch.Tensor, req: Request, args, layout: Layout) -> int:
    """DC-AE-V decoding into ``args.out`` (rank 0 writes; under several processes all ranks decode)."""
    tile = auto_tile(latents.shape[-2:], args.decode_tile)
    writing = VideoWriter(args.out, req.fps) if layout.is_main else contextlib.nullcontext()
    with writing as writer:
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


def run(args: argparse.Namespace) -> dict:
    """Generate one video as ``args`` say; returns frames, size, per-stage (name, seconds, peak MiB)."""
    pipe = open_pipeline(args.pipeline)
    req = build_request(args, pipe)
    if args.no_progress:
        disable_library_bars()
    layout = setup(args.sp, args.cfg_parallel, args.device)
    try:
        return _generate(args, pipe, req, layout)
    finally:
        teardown(layout)


def _generate(args: argparse.Namespace, pipe: Pipeline, req: Request, layout: Layout) -> dict:
    device, dtype = layout.device, DTYPES[args.dtype]
    place, stages = Placement(device, args.offload), StageLog(device)
    with stages.stage("load"):
        models = load_models(pipe, req, place, dtype)
    encoded = encode_inputs(models, req, place, stages)
    with stages.stage("load transformer"):
        models.dit = load_transformer(pipe, req, place, dtype)
        models.dit_2 = load_transformer_2(pipe, dtype)
    inputs = {k: v.to(device) if v is not None else None for k, v in encoded.items()}
    noise = initial_noise(models, req, args.seed).to(device)
    dits = [m for m in (models.dit, models.dit_2) if m is not None]
    experts = ExpertPlacement(place, dits, one_at_a_time=args.offload or not experts_fit(dits, device))
    with stages.stage("denoise"), experts.denoising(), torch.no_grad():
        latents, stats = denoise(models, req, inputs, noise, args, layout, experts)
    models.dit = models.dit_2 = None
    latents = latents.float() / pipe.manifest.scaling_factor
    with stages.stage("decode"), place.use(models.vae):
        frames = decode(models, latents, req, args, layout)
    per_step = next(sec for name, sec, _ in stages.rows if name == "denoise") / req.steps
    if layout.is_main:
        log.info("wrote %s: %d frames %dx%d, %d steps on %d process(es)\n%s\ndenoise per step: %.3f s "
                 "(first step %.3f s%s, then %.3f s each; CFG %s; %s)", args.out, frames, req.size[0],
                 req.size[1], req.steps, layout.world, stages.report(), per_step, stats["first_step_s"],
                 ", compile included" if args.compile else "", stats["step_s"], stats["mode"],
                 experts.describe())  # fmt: skip
    timing = {k: stats[k] for k in ("first_step_s", "step_s", "skipped", "calls")}
    return {"frames": frames, "size": req.size, "stages": stages.rows, "seconds_per_step": per_step,
            "latents": latents, "experts": experts.describe(), **timing}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
