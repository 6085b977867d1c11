"""Shared fixtures: two folders of tiny synthetic MP4s with the same names (real, and a distorted copy)."""

from __future__ import annotations

import pytest
import torch

from megavg.infer.video_io import VideoWriter

FRAMES, SIZE, COUNT = 8, 32, 4


def smooth_video(seed: int) -> torch.Tensor:
    """1,3,T,H,W in [-1, 1]: a moving low-frequency pattern (survives H.264 well)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, FRAMES, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(FRAMES, SIZE, SIZE), mode="trilinear")


def write(path, video: torch.Tensor) -> None:
    with VideoWriter(path, 8) as writer:
        writer.write(video)


@pytest.fixture(scope="session")
def video_dirs(tmp_path_factory):
    """(real, fake) folders: v0..v3.mp4 each; fake = real darkened and shifted in colour."""
    root = tmp_path_factory.mktemp("eval_videos")
    real, fake = root / "real", root / "fake"
    real.mkdir(), fake.mkdir()
    for i in range(COUNT):
        video = smooth_video(i)
        write(real / f"v{i}.mp4", video)
        write(fake / f"v{i}.mp4", (0.7 * video + 0.1 * torch.roll(video, 1, dims=1)).clamp(-1, 1))
    return real, fake
