"""PyAV video decoding, clip sampling and resize/crop to (H, W) buckets."""

from __future__ import annotations

import dataclasses
import io
import math
import os

import av
import numpy as np
import torch
import torch.nn.functional as F

from megavg.utils.errors import UserError

VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi")  # file extensions taken as videos


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a full decode of a video found."""

    frames: int
    fps: float
    width: int
    height: int


def _open(source: bytes | str | os.PathLike) -> av.container.InputContainer:
    return av.open(io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source), mode="r")


def probe_video(source: bytes | str | os.PathLike, name: str) -> VideoInfo:
    """Decode every frame of ``source`` and return its size, frame count and rate.

    Raises UserError naming ``name`` when it is not a decodable video (no video stream, broken or
    truncated data, no frame at all).
    """
    try:
        with _open(source) as container:
            if not container.streams.video:
                raise UserError(f"{name}: has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            count, width, height = 0, 0, 0
            for frame in container.decode(stream):
                count, width, height = count + 1, frame.width, frame.height
            fps = float(stream.average_rate or stream.guessed_rate or 0)
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise UserError(f"{name}: not a decodable video ({err})") from None
    if count == 0:
        raise UserError(f"{name}: no decodable video frame")
    return VideoInfo(frames=count, fps=fps, width=width, height=height)


def decode_frames(data: bytes, start: int, count: int, stride: int, size: tuple[int, int]) -> np.ndarray:
    """Decode frames ``start, start+stride, ...`` (``count`` of them), scaled to ``size`` = (H, W).

    Frame i is the one shown at time i / fps: decoding seeks to the keyframe before ``start`` and stops
    after the last frame needed (a video without timestamps is decoded from its first frame). Returns
    uint8 [count, H, W, 3]. Raises ValueError when the video ends early, av errors when it is corrupt.
    """
    out = []
    with _open(data) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate, base = stream.average_rate, stream.time_base
        first = stream.start_time or 0
        timed = bool(rate and base)
        if timed and start > 0:
            container.seek(first + int(start / (rate * base)), stream=stream, backward=True, any_frame=False)
        for position, frame in enumerate(container.decode(stream)):
            index = round((frame.pts - first) * base * rate) if timed and frame.pts is not None else position
            if index >= start + len(out) * stride:  # the wanted frame, or the next one after a gap
                out.append(frame.reformat(width=size[1], height=size[0], format="rgb24").to_ndarray())
                if len(out) == count:
                    break
    if len(out) < count:
        raise ValueError(f"video has fewer than {start + (count - 1) * stride + 1} frames")
    return np.stack(out)


def clip_start(rng: np.random.Generator, total: int, count: int, stride: int) -> int:
    """Uniform random first frame of a clip of ``count`` frames every ``stride`` in ``total`` frames."""
    span = (count - 1) * stride + 1
    if total < span:
        raise ValueError(f"video has {total} frames, a clip needs {span}")
    return int(rng.integers(0, total - span + 1))


def nearest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest (in log scale) to ``width / height``."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[1] / b[0]) - aspect))


def decode_size(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """(H, W) to decode at: the aspect-preserving downscale that still covers every bucket."""
    scale = min(1.0, max(max(bh / height, bw / width) for bh, bw in buckets))
    return max(1, math.ceil(height * scale)), max(1, math.ceil(width * scale))


def resize_crop(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [3, T, h, w] in [-1, 1]: scale to cover ``size``, centre-crop."""
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # T, 3, H, W
    height, width = video.shape[-2:]
    out_h, out_w = size
    scale = max(out_h / height, out_w / width)
    cover = (max(out_h, round(height * scale)), max(out_w, round(width * scale)))
    if cover != (height, width):
        video = F.interpolate(video, size=cover, mode="bilinear", antialias=True, align_corners=False)
    top, left = (cover[0] - out_h) // 2, (cover[1] - out_w) // 2
    video = video[:, :, top : top + out_h, left : left + out_w]
    video = (video / 127.5 - 1.0).clamp(-1.0, 1.0)
    return video.permute(1, 0, 2, 3).contiguous()  # 3, T, h, w


def check_video_file(path: str | os.PathLike, min_frames: int) -> VideoInfo:
    """Validate one input video for sharding: exists, non-empty, decodable, at least ``min_frames``."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    info = probe_video(path, str(path))
    if info.frames < min_frames:
        raise UserError(f"{path}: only {info.frames} frames, need at least {min_frames}")
    return info
