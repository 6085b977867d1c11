"""Standalone DC-AE-V runner: stream a video file through encode -> decode on one device.

    python -m megavg.infer.reconstruct --model FOLDER INPUT.mp4 --out OUT.mp4 [--device cuda] [--dtype bf16]

``FOLDER`` is a megavg model folder (``tools/convert_official.py dcaev`` or ``tools/consolidate.py``).
Frames are read, encoded, decoded and written chunk by chunk, so memory does not grow with the video's
length; the output MP4 appears only when complete. Prints the PSNR against the input. The input is read
as ``megavg.data.video`` reads every video (a damaged or cut-short file is one ``error:`` line, exit 2,
nothing written; rotation applied); the output keeps the displayed orientation, the size (odd sizes
too) and each frame's timestamp (see ``megavg.infer.video_io``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator

import torch

import megavg.models
from megavg.infer.video_io import VideoWriter, check_output, declared_frames, read_pieces, video_timing
from megavg.models.dcaev.streaming import StreamingDecoder, StreamingEncoder
from megavg.utils.errors import UserError, run_cli
from megavg.utils.logging import get_logger, plural, progress

log = get_logger("megavg.infer.reconstruct")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@torch.no_grad()
def reconstruct_stream(model, pieces: Iterator[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (input frames, reconstructed frames) pairs, 1,3,n,H,W each, as soon as they are decoded."""
    param = next(model.parameters())
    encoder, decoder = StreamingEncoder(model), StreamingDecoder(model)
    waiting: list[torch.Tensor] = []  # input frames not yet matched by decoded output
    size = None

    def matched(outputs: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for out in outputs:
            inputs = torch.cat(waiting, dim=2) if waiting else out[:, :, :0]
            n = min(out.shape[2], inputs.shape[2])  # the last chunk's output covers repeat-padded frames
            waiting[:] = [inputs[:, :, n:]]
            yield inputs[:, :, :n], out[:, :, :n, : size[0], : size[1]].float().cpu()

    for piece in pieces:
        size = size or piece.shape[-2:]
        waiting.append(piece)
        for z in encoder.push(piece.to(param.device, param.dtype)):
            yield from matched(decoder.push(z))
    for z in encoder.flush():
        yield from matched(decoder.push(z))
    yield from matched(decoder.flush())


def psnr(mse: float) -> float:
    """PSNR in dB of frames in [-1, 1] (peak-to-peak 2)."""
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m megavg.infer.reconstruct", description=__doc__.split("\n")[0]
    )
    parser.add_argument("input", help="video file")
    parser.add_argument("--model", required=True, help="megavg DC-AE-V model folder")
    parser.add_argument("--out", required=True, help="output video: .mp4, .webm or .gif (by the extension)")
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames: must be >= 1 (or left out for the whole video), got {args.frames}")
    check_output(args.out)
    fps, time_base = video_timing(args.input)  # bad input fails before the model loads
    model = megavg.models.load(args.model, device=args.device, dtype=DTYPES[args.dtype]).eval()
    if not hasattr(model, "frame_chunk"):
        raise UserError(f"{args.model}: not a DC-AE-V model folder")
    start, frames, sq_err, values = time.perf_counter(), 0, 0.0, 0
    times: list = []  # input frame times, filled as frames are read
    total = min(filter(None, (args.frames, declared_frames(args.input))), default=None)
    bar = progress(total, "reconstruct", "frame")
    with VideoWriter(args.out, fps, time_base=time_base) as writer, bar:
        pieces = read_pieces(args.input, model.frame_chunk, args.frames, times)
        for inputs, outputs in reconstruct_stream(model, pieces):
            writer.write(outputs, times[frames : frames + outputs.shape[2]])
            sq_err += float(((outputs - inputs) ** 2).sum())
            frames, values = frames + inputs.shape[2], values + inputs.numel()
            bar.update(inputs.shape[2])
    seconds = time.perf_counter() - start
    result = {"frames": frames, "psnr_db": psnr(sq_err / max(values, 1)), "fps": frames / seconds}
    log.info(
        "wrote %s: %s, PSNR %.2f dB, %.2f frames/s",
        args.out,
        plural(frames, "frame"),
        result["psnr_db"],
        result["fps"],
    )
    return result


if __name__ == "__main__":
    run_cli(main)
