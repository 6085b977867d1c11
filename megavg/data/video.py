"""PyAV video decoding (upright, checked for completeness), clip sampling and resize/crop to buckets.

Rules every reader of a video in megavg follows (shards, loader, ``reconstruct``, ``precompute``):

- Decoding is single-threaded: FFmpeg's frame-threaded decoder (``thread_type="AUTO"``) swallows the
  decode error of a stream cut inside its last packets, so a truncated file would look complete.
- A full decode must reach the end the container declares (:func:`check_complete`). The container's
  frame count (MP4/MOV sample tables, AVI headers, Matroska ``NUMBER_OF_FRAMES`` tags) and the stream's
  duration (MP4/MOV/AVI header, Matroska/WebM ``DURATION`` tag) are compared with what was decoded.
  When both are declared, the video is cut short only if it misses both: fewer frames than counted
  *and* its last frame ends more than half a frame period before the declared duration (an MP4 edit
  list hides frames that the sample table still counts, but its duration is the edited one). When
  one is declared, that one decides. When neither is, only decode errors reveal damage.
- Rotation metadata (the display matrix, in multiples of 90 degrees) is applied: frames come out the
  way a player shows them, and sizes are displayed sizes. Mirroring display matrices are not applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
import torch
import torch.nn.functional as F

from megavg.utils.errors import UserError

VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi")  # file extensions taken as videos


class VideoError(UserError):
    """A video that cannot be used: no video stream, undecodable, damaged or cut short (names the file)."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a full decode of a video found; ``width``/``height`` are the displayed (upright) size."""

    frames: int
    fps: float
    width: int
    height: int
    rotation: int = 0  # degrees counter-clockwise applied to stored frames to show them (0/90/180/270)


def _open(source: bytes | str | os.PathLike) -> av.container.InputContainer:
    return av.open(io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source), mode="r")


@contextlib.contextmanager
def open_video(source: bytes | str | os.PathLike, name: str) -> Iterator[av.container.InputContainer]:
    """Open ``source`` for single-threaded decoding of its first video stream.

    FFmpeg errors raised while the block runs (demuxing, decoding, converting) become a VideoError
    naming ``name``, as does a file without a video stream.
    """
    try:
        with _open(source) as container:
            if not container.streams.video:
                raise VideoError(f"{name}: has no video stream (not a video, or its index is damaged)")
            container.streams.video[0].thread_type = "SLICE"  # never FRAME: it hides the last error
            yield container
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise VideoError(f"{name}: not a decodable video ({err})") from None


def quarter_turns(rotation: float) -> int:
    """Counter-clockwise quarter turns (0..3) of a display rotation in degrees (rounded to 90)."""
    return round(rotation / 90) % 4


def upright(image: np.ndarray, rotation: float) -> np.ndarray:
    """A stored frame [H, W, C] turned as its display matrix says (``rotation`` degrees counter-clockwise)."""
    turns = quarter_turns(rotation)
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def displayed_size(height: int, width: int, rotation: float) -> tuple[int, int]:
    """(H, W) of a stored ``height`` x ``width`` frame once turned upright."""
    return (width, height) if quarter_turns(rotation) % 2 else (height, width)


def frame_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The stream's average frame rate (None when the container does not tell)."""
    rate = stream.average_rate or stream.guessed_rate
    return Fraction(rate) if rate else None


def frame_time(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> Fraction | None:
    """Presentation time of ``frame`` in seconds from the stream's start (None without timestamps)."""
    if frame.pts is None or frame.time_base is None:
        return None
    return (frame.pts - (stream.start_time or 0)) * Fraction(frame.time_base)


def _declared_duration(stream: av.video.stream.VideoStream) -> Fraction | None:
    if stream.duration and stream.time_base:
        return stream.duration * Fraction(stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")  # Matroska/WebM tag
    try:
        hours, minutes, seconds = tag.split(":")
        return (int(hours) * 60 + int(minutes)) * 60 + Fraction(seconds)
    except (AttributeError, ValueError):
        return None


def _declared_frames(stream: av.video.stream.VideoStream) -> int:
    tag = stream.metadata.get("NUMBER_OF_FRAMES", "")  # Matroska statistics tag (mkvmerge)
    return stream.frames or (int(tag) if tag.isdigit() else 0)


def check_complete(name: str, stream, frames: int, end: Fraction | None) -> None:
    """Raise VideoError when ``frames`` decoded frames ending at ``end`` (seconds) fall short of what the
    container declares (the rule is in the module docstring)."""
    count, duration, rate = _declared_frames(stream), _declared_duration(stream), frame_rate(stream)
    few = count > 0 and frames < count
    early = duration is not None and end is not None and end < duration - (1 / (2 * rate) if rate else 0)
    if (few and early) or (few and (duration is None or end is None)) or (early and not count):
        declared = f"{count} frames" if count else f"{float(duration):.3f} s"
        decoded = f"{frames} frames" + (f" ending at {float(end):.3f} s" if end is not None else "")
        raise VideoError(f"{name}: cut short (truncated or damaged): decoded {decoded}, declared {declared}")


def checked_frames(container: av.container.InputContainer, name: str, full: bool = True) -> Iterator[tuple]:
    """Yield (av frame, its time in seconds or None) for every frame of the first video stream of an
    :func:`open_video` container.

    With ``full`` the stream is checked to be complete after its last frame (:func:`check_complete`);
    a consumer that stops early skips the check. Turn frames upright with :func:`upright` and
    ``frame.rotation``.
    """
    stream = container.streams.video[0]
    count, end, rate = 0, None, frame_rate(stream)
    for frame in container.decode(stream):
        time = frame_time(frame, stream)
        step = frame.duration * Fraction(frame.time_base) if frame.duration and frame.time_base else None
        end = None if time is None else time + (step or (1 / rate if rate else 0))
        count += 1
        yield frame, time
    if full:
        check_complete(name, stream, count, end)


def probe_video(source: bytes | str | os.PathLike, name: str) -> VideoInfo:
    """Decode every frame of ``source``; return its displayed size, frame count, rate and rotation.

    Raises VideoError naming ``name`` when it is not a decodable video (no video stream, broken data,
    no frame at all) or when it is cut short (see the module docstring).
    """
    count, stored, rotation = 0, (0, 0), 0
    with open_video(source, name) as container:
        fps = float(frame_rate(container.streams.video[0]) or 0)
        for frame, _ in checked_frames(container, name):
            if count == 0:
                stored, rotation = (frame.height, frame.width), quarter_turns(frame.rotation) * 90
            count += 1
    if count == 0:
        raise VideoError(f"{name}: no decodable video frame")
    height, width = displayed_size(*stored, rotation)
    return VideoInfo(frames=count, fps=fps, width=width, height=height, rotation=rotation)


def decode_frames(
    data: bytes,
    start: int,
    count: int,
    stride: int,
    size: tuple[int, int],
    name: str = "video",
    rotation: int | None = None,
) -> np.ndarray:
    """Decode frames ``start, start+stride, ...`` (``count`` of them; frame i is the i-th decoded frame),
    upright, scaled to ``size`` = (H, W) (displayed orientation).

    Decoding seeks to the keyframe before ``start`` (estimated from its time at the average frame rate)
    and stops after the last frame needed. When that estimate leaves too few frames (variable frame
    rate) it decodes again from the first frame. Returns uint8 [count, H, W, 3]. Raises VideoError
    (naming ``name``) when the video is corrupt or ends early, or when ``rotation`` (what the sample's
    metadata recorded, which ``size`` was computed from) differs from the video's.
    """
    out = _decode_clip(data, start, count, stride, size, name, start > 0, rotation)
    if len(out) < count and start > 0:
        out = _decode_clip(data, start, count, stride, size, name, False, rotation)
    if len(out) < count:
        raise VideoError(f"{name}: has fewer than {start + (count - 1) * stride + 1} frames")
    return np.stack(out)


def _decode_clip(
    data: bytes, start: int, count: int, stride: int, size: tuple, name: str, seek: bool, rotation: int | None
) -> list:
    out: list[np.ndarray] = []
    with open_video(data, name) as container:
        stream = container.streams.video[0]
        rate, base, first = stream.average_rate, stream.time_base, stream.start_time or 0
        position = 0
        if seek and rate and base:
            container.seek(first + int(start / (rate * base)), stream=stream, backward=True, any_frame=False)
            position = None  # the landing frame's position, from its time
        for frame in container.decode(stream):
            if position is None:
                if frame.pts is None:
                    return []  # cannot tell where the seek landed: decode from the start
                position = round((frame.pts - first) * base * rate)
            if rotation is not None and quarter_turns(frame.rotation) != quarter_turns(rotation):
                found = quarter_turns(frame.rotation) * 90
                raise VideoError(
                    f"{name}: metadata says rotation {rotation}, the video {found} "
                    "(shard written before rotation support? re-run make_shards)"
                )
            if position >= start and (position - start) % stride == 0:
                height, width = displayed_size(*size, frame.rotation)  # stored orientation
                image = frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
                out.append(upright(image, frame.rotation))
                if len(out) == count:
                    break
            position += 1
    return out


def clip_start(rng: np.random.Generator, total: int, count: int, stride: int) -> int:
    """Uniform random first frame of a clip of ``count`` frames every ``stride`` in ``total`` frames."""
    span = (count - 1) * stride + 1
    if total < span:
        raise VideoError(f"video has {total} frames, a clip needs {span}")
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
    """Validate one input video for sharding: a non-empty file, decodable to its declared end, at least
    ``min_frames`` frames."""
    if os.path.isdir(path):
        raise VideoError(f"{path}: is a folder, not a video file")
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: empty file (0 bytes)")
    info = probe_video(path, str(path))
    if info.frames < min_frames:
        raise VideoError(f"{path}: only {info.frames} frames, need at least {min_frames}")
    return info
