"""torchrun worker: ``python -m megavg.infer.generate`` in this process, recording what the DiT sees.

Arguments are generate's. Saves ``rank<R>.pt`` = {latents, tokens (per DiT call: tokens block 0 got),
frames, pixels (the uint8 frames handed to the MP4 encoder; rank 0)} into ``$MEGAVG_TEST_OUT``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from megavg.infer import generate, stages
from megavg.infer.video_io import VideoWriter


def record_pixels(pixels: list) -> None:
    """Make VideoWriter.write also keep the frames it encodes, quantized as it quantizes them."""
    real = VideoWriter.write

    def write(self, piece, times=None):
        pixels.append(((piece[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))  # 3, n, H, W
        return real(self, piece, times)

    VideoWriter.write = write


def main() -> None:
    seen: list[int] = []
    real = stages.denoise

    def recording(models, *args):
        models.dit.blocks[0].register_forward_pre_hook(
            lambda _m, a: seen.append(a[0].shape[1])
        )  # x [B, S, dim]
        return real(models, *args)

    stages.denoise = recording
    pixels: list = []
    record_pixels(pixels)
    result = generate.main(sys.argv[1:])
    rank = int(os.environ.get("RANK", "0"))
    out = {"latents": result["latents"], "tokens": seen, "frames": result["frames"], "pixels": pixels}
    torch.save(out, Path(os.environ["MEGAVG_TEST_OUT"]) / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
