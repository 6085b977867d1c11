"""Write the world's clips as MP4 files and megavg video shards (through ``tools/make_shards.py``'s code).

    write_split(out / "train", scenes, frames=16, size=64)   # out/train/{clips/*.mp4, list.jsonl, shards/}

Each split folder holds the MP4 files, a ``list.jsonl`` of (path, caption) rows and ``shards/`` written by
:func:`megavg.data.make_shards.main` from that list, the path any user's videos take.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from megavg.data import make_shards
from megavg.infer.video_io import VideoWriter
from megavg.repro.world import Scene, render

FPS = Fraction(8)
CRF = 0  # H.264 constant quality: lossless luma (chroma is 4:2:0)


def write_clip(path: Path, frames: np.ndarray) -> None:
    """uint8 [T, H, W, 3] -> an MP4 at FPS."""
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0).unsqueeze(0)  # 1,3,T,H,W
    with VideoWriter(path, FPS, crf=CRF) as writer:
        writer.write(video)


def write_split(folder: Path, scenes: list[Scene], frames: int, size: int, shards: int = 8) -> Path:
    """Render ``scenes`` into ``folder`` as ``shards`` shards (enough for every data-parallel rank and
    loader worker); returns the shard folder (complete or absent)."""
    clips = folder / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, scene in enumerate(scenes):
        path = clips / f"{i:06d}.mp4"
        if not path.is_file():
            write_clip(path, render(scene, frames, size))
        rows.append({"path": f"clips/{path.name}", "caption": scene.caption})
    listing = folder / "list.jsonl"
    listing.write_text("".join(json.dumps(row) + "\n" for row in rows))
    per_shard = -(-len(scenes) // shards)
    out = folder / "shards"
    make_shards.main([str(listing), "--out", str(out), "--samples-per-shard", str(per_shard), "--overwrite"])
    return out
