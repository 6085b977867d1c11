"""The videos an evaluation reads: a folder of video files, or a folder of megavg pixel shards.

Video files (``.mp4 .webm .mkv .mov .avi``, directly in the folder, sorted by name) are decoded with
megavg's PyAV reader (:func:`megavg.infer.video_io.read_pieces`: single-threaded, upright, checked to
be complete). A folder with megavg's shard ``index.json`` of kind ``video`` (``make_shards``) is read
sample by sample, each sample's ``.mp4`` decoded the same way. Latent shards are refused: FVD compares
pixels, decode them with the DC-AE-V first (``python -m megavg.infer.reconstruct``).
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import numpy as np
import torch

from megavg.data.video import VIDEO_EXTS, checked_frames, open_video, upright
from megavg.utils.errors import UserError


@dataclasses.dataclass(frozen=True)
class VideoRef:
    """One input video: ``name`` (file stem or shard sample key), and where its bytes are."""

    name: str
    path: Path
    member: str = ""  # the tar member holding the video, for a shard sample


def list_videos(folder: str) -> list[VideoRef]:
    """The videos in ``folder`` (sorted by name); a missing or empty folder is a UserError."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{folder}: no such folder of videos")
    index = root / "index.json"
    if index.is_file():
        refs = _shard_videos(root, index)
    else:
        files = sorted(
            p for p in root.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in VIDEO_EXTS
        )
        refs = [VideoRef(p.stem, p) for p in files]
    if not refs:
        raise UserError(f"{folder}: no videos in it ({', '.join(VIDEO_EXTS)} files or video shards)")
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"{folder}: two videos named {dup!r} (names must be unique)")
    return refs


def _shard_videos(root: Path, index: Path) -> list[VideoRef]:
    try:
        meta = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{index}: unreadable shard index ({err})") from None
    if meta.get("kind") != "video":
        raise UserError(f"{root}: holds {meta.get('kind')!r} shards; FVD and recon need video (pixel) shards")
    refs = []
    for tar in sorted(root.glob("*.tar")):
        try:
            with tarfile.open(tar) as archive:
                members = [m.name for m in archive.getmembers() if m.name.endswith(".mp4")]
        except tarfile.TarError as err:
            raise UserError(f"{tar}: unreadable shard ({err})") from None
        refs += [VideoRef(m.rsplit(".", 1)[0], tar, m) for m in members]
    return sorted(refs, key=lambda r: r.name)


def _frames(source, name: str, count: int | None) -> list[np.ndarray]:
    frames = []
    with open_video(source, name) as container:
        for frame, _ in checked_frames(container, name, full=count is None):
            frames.append(upright(frame.to_ndarray(format="rgb24"), frame.rotation))  # H, W, 3 uint8
            if count is not None and len(frames) == count:
                break
    return frames


def read_video(ref: VideoRef, frames: int | None = None) -> torch.Tensor:
    """The first ``frames`` frames (all when None) of ``ref`` as float32 3,T,H,W in [-1, 1]."""
    label = f"{ref.path}:{ref.member}" if ref.member else str(ref.path)
    if ref.member:
        with tarfile.open(ref.path) as archive:
            source = archive.extractfile(ref.member).read()
    else:
        source = ref.path
    decoded = _frames(source, label, frames)
    if not decoded or (frames is not None and len(decoded) < frames):
        raise UserError(f"{label}: has {len(decoded)} frames, the evaluation needs {frames or 1}")
    video = torch.from_numpy(np.stack(decoded)).permute(3, 0, 1, 2).float()  # 3, T, H, W
    return video / 127.5 - 1.0
