"""Text-to-video and image-to-video on one device with a DC-VideoGen pipeline.

    python -m megavg.infer.generate PIPELINE --prompt "a red fox in snow" --out fox.mp4
    python -m megavg.infer.generate PIPELINE --prompt-file p.txt --image first.png --out i2v.mp4 --offload

``PIPELINE`` is a folder written by ``tools/export_pipeline.py`` or the released DC-VideoGen-Wan2.1-14B
folder (:mod:`megavg.infer.pipeline`). The command line over :class:`megavg.infer.runner.Pipeline`
(``megavg.Pipeline`` in Python): stages umT5 text encoding, for I2V the CLIP image tokens and the DC-AE-V
first-frame condition, denoising, then DC-AE-V decoding streamed straight into the MP4, which appears
only when complete (:mod:`megavg.infer.stages`). ``--offload`` keeps every model on the CPU except while
its stage runs. Prints time and peak memory per stage (:mod:`megavg.infer.stage_log`).

Bad input (missing or wrong pipeline folder, an undecodable image, an empty prompt file, a size off the
model's grid) is one ``error:`` line and exit code 2, before any weight is read.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

from megavg.infer.distributed import setup, teardown
from megavg.infer.request import DEFAULT_FRAMES, DEFAULT_SIZE, Request, load_image
from megavg.infer.runner import DTYPES, Pipeline
from megavg.infer.stage_log import denoise_summary
from megavg.infer.stages import RunOptions
from megavg.infer.step_cache import METHODS as CACHE_METHODS
from megavg.infer.video_io import CONTAINERS, VideoWriter, check_output
from megavg.utils.errors import UserError, run_cli
from megavg.utils.logging import disable_library_bars, get_logger, plural

log = get_logger("megavg.infer.generate")
# and the pipeline's steps (50 for the release)
GPU_DEFAULTS = {"size": DEFAULT_SIZE, "frames": DEFAULT_FRAMES}
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


def build_request(args: argparse.Namespace, pipe: Pipeline) -> Request:
    """The request ``args`` describe, checked (output extension, prompt, image, grid) before any weight."""
    check_output(args.out)
    prompt = read_prompt(args)
    image = load_image(args.image) if args.image else None
    req = pipe.request(
        prompt, image, negative_prompt=args.negative_prompt, size=args.size, frames=args.frames,
        steps=args.steps, guidance=args.guidance, shift=args.shift, solver=args.solver, fps=args.fps,
    )  # fmt: skip
    warn_cpu_defaults(args, req.steps)
    return req


def run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        progress=not args.no_progress,
        cfg_batch={"auto": None, "on": True, "off": False}[args.cfg_batch],
        compile=args.compile,
        cache=args.cache,
        cache_threshold=args.cache_threshold,
        decode_tile=args.decode_tile,
    )


def run(args: argparse.Namespace) -> dict:
    """Generate one video as ``args`` say; returns frames, size, per-stage (name, seconds, peak MiB)."""
    pipe = Pipeline.from_pretrained(args.pipeline, args.device, args.dtype, args.offload, keep_loaded=False)
    req = build_request(args, pipe)
    if args.no_progress:
        disable_library_bars()
    layout = setup(args.sp, args.cfg_parallel, args.device)
    try:
        writing = VideoWriter(args.out, req.fps) if layout.is_main else contextlib.nullcontext()
        with writing as writer:
            result = pipe.run(req, writer, args.seed, run_options(args), layout)
    finally:
        teardown(layout)
    if layout.is_main:
        log.info(
            "wrote %s: %s %dx%d, %s on %s\n%s\n%s", args.out, plural(result["frames"], "frame"), req.size[0],
            req.size[1], plural(req.steps, "step"), plural(layout.world, "process", "processes"),
            result["stage_log"].report(),
            denoise_summary(result["stage_log"].seconds("denoise"), req.steps, result, args.compile),
        )  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
