"""Frame-by-frame video reading and writing with PyAV, so runners never hold a whole clip in memory.

Reading follows the rules of :mod:`megavg.data.video` (single-threaded decoding, complete to the
declared end, frames turned upright). Writing keeps the input's size and timing:

- Each frame is written at its input timestamp (in the input's time base), so variable-frame-rate
  input keeps its timing; input without timestamps is written at a constant rate.
- H.264 in 4:2:0 (``yuv420p``) needs even sizes. An odd width or height is written in 4:4:4
  (``yuv444p``, which takes any size) rather than cropped or padded, announced in one log line:
  the frames keep every pixel, but some hardware players cannot play 4:4:4.
- The output's extension picks the container and codec (:data:`CONTAINERS`): ``.mp4`` H.264, ``.webm``
  VP9 (4:2:0, any size), ``.gif`` GIF (ffmpeg's fixed 256-colour ``rgb8`` palette, 1/100 s timestamps);
  any other extension is one clear error (:func:`check_output`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
import torch

from megavg.utils.errors import UserError
from megavg.utils.io import atomic_file
from megavg.utils.logging import get_logger

log = get_logger(__name__)
DEFAULT_FPS = Fraction(25)  # for a video whose container gives no rate


CONTAINERS = {".mp4": ("mp4", "libx264"), ".webm": ("webm", "libvpx-vp9"), ".gif": ("gif", "gif")}


def check_output(path: str | os.PathLike, flag: str = "--out") -> tuple[str, str]:
    """The (container format, codec) that the extension of ``path`` selects; UserError for any other."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in CONTAINERS:
        raise UserError(
            f"{flag} {path}: unsupported video extension {ext or '(none)'!r} (use {', '.join(CONTAINERS)})"
        )
    return CONTAINERS[ext]


def _check_file(path: str | os.PathLike) -> None:
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")


def read_pieces(
    path: str | os.PathLike, piece: int, max_frames: int | None = None, times: list | None = None
) -> Iterator[torch.Tensor]:
    """Yield the video at ``path`` as float32 pieces 1,3,n,H,W in [-1, 1], ``n <= piece`` frames each,
    upright. Each frame's time in seconds (Fraction, or None without timestamps) is appended to
    ``times`` when given. A video cut short raises VideoError after its last frame (unless
    ``max_frames`` stops the read first)."""
    from megavg.data.video import checked_frames, open_video, upright  # readers only: writers stay light

    _check_file(path)
    frames: list[np.ndarray] = []
    count = 0
    with open_video(path, str(path)) as container:
        for frame, time in checked_frames(container, str(path), full=max_frames is None):
            frames.append(upright(frame.to_ndarray(format="rgb24"), frame.rotation))  # H, W, 3 uint8
            if times is not None:
                times.append(time)
            count += 1
            if len(frames) == piece:
                yield _to_tensor(frames)
                frames = []
            if max_frames is not None and count >= max_frames:
                break
    if frames:
        yield _to_tensor(frames)
    if count == 0:
        raise UserError(f"{path}: no decodable video frame")


def declared_frames(path: str | os.PathLike) -> int | None:
    """Frame count the container declares for the video at ``path`` (None when it declares none)."""
    from megavg.data.video import _declared_frames, open_video

    with open_video(path, str(path)) as container:
        return _declared_frames(container.streams.video[0]) or None


def video_timing(path: str | os.PathLike) -> tuple[Fraction, Fraction | None]:
    """(average frame rate, time base) of the video at ``path``; the rate is 25 when the container does
    not say. Also the up-front check of an input: a missing, empty or undecodable file is a UserError."""
    from megavg.data.video import frame_rate, open_video

    _check_file(path)
    with open_video(path, str(path)) as container:
        stream = container.streams.video[0]
        return frame_rate(stream) or DEFAULT_FPS, Fraction(stream.time_base) if stream.time_base else None


def _to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    video = torch.from_numpy(np.stack(frames)).float()  # n, H, W, 3
    return (video / 127.5 - 1.0).permute(3, 0, 1, 2).unsqueeze(0)  # 1, 3, n, H, W


def to_uint8(piece: torch.Tensor) -> np.ndarray:
    """A 1,3,n,H,W piece in [-1, 1] as the uint8 frames [n, H, W, 3] a video holds (clamped, rounded)."""
    frames = ((piece[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # 3, n, H, W
    return frames.permute(1, 2, 3, 0).cpu().numpy()  # n, H, W, 3


class VideoWriter:
    """Write 1,3,n,H,W pieces in [-1, 1] to ``path`` (MP4, WebM or GIF by its extension, see
    :func:`check_output`); the file appears only when the writer closes. ``crf``: H.264/VP9 quality.

    ``time_base`` (seconds per tick) is the unit of the timestamps given to :meth:`write`; without it
    (or for frames without a time) frames follow each other at ``fps``.
    """

    def __init__(
        self, path: str | os.PathLike, fps: Fraction, crf: int = 18, time_base: Fraction | None = None
    ):
        self.path, self.fps, self.crf = path, fps, crf
        self.format, self.codec = check_output(path)
        self.time_base = time_base or 1 / Fraction(fps)
        self._atomic = atomic_file(path)
        self._tmp = self._atomic.__enter__()
        self._container = av.open(str(self._tmp), mode="w", format=self.format)
        self._stream = None
        self._step = max(1, round(1 / (Fraction(fps) * self.time_base)))  # one frame period, in ticks
        self._last_pts: int | None = None

    def _pixel_format(self, height: int, width: int) -> str:
        if self.codec == "gif":
            return "rgb8"
        if self.codec == "libx264" and (height % 2 or width % 2):
            return "yuv444p"
        return "yuv420p"

    def _open_stream(self, height: int, width: int) -> None:
        self._stream = self._container.add_stream(self.codec, rate=self.fps)
        self._stream.height, self._stream.width = height, width
        self._stream.pix_fmt = self._pixel_format(height, width)
        if self._stream.pix_fmt == "yuv444p":
            log.info(
                "%s: odd frame size %dx%d written as H.264 4:4:4 (4:2:0 needs even sizes; "
                "some hardware players cannot play 4:4:4)", self.path, width, height
            )  # fmt: skip
        self._stream.codec_context.time_base = self.time_base
        if self.codec != "gif":
            self._stream.options = {"crf": str(self.crf), "b": "0"}  # constant quality (VP9: needs b=0)

    def write(self, piece: torch.Tensor, times: list | None = None) -> None:
        """Encode a 1,3,n,H,W piece; ``times`` gives each frame's time in seconds (None: the next slot)."""
        self.write_frames(to_uint8(piece), times)

    def write_frames(self, frames: np.ndarray, times: list | None = None) -> None:
        """Encode uint8 frames [n, H, W, 3] (as :func:`to_uint8` makes them)."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise UserError(
                f"{self.path}: frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        if self._stream is None:
            self._open_stream(frames.shape[1], frames.shape[2])
        for i, frame in enumerate(frames):
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            time = times[i] if times is not None else None
            last = self._last_pts
            pts = (
                round(time / self.time_base)
                if time is not None
                else (0 if last is None else last + self._step)
            )
            image.pts = pts if last is None else max(pts, last + 1)  # strictly increasing
            image.time_base, self._last_pts = self.time_base, image.pts
            self._container.mux(self._stream.encode(image))

    def close(self, ok: bool = True) -> None:
        """Flush and publish the file (``ok``) or discard it."""
        if ok and self._stream is not None:
            self._container.mux(self._stream.encode())
        self._container.close()
        exc = None if ok else RuntimeError("discarded")
        self._atomic.__exit__(type(exc) if exc else None, exc, None)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close(ok=exc_type is None)
        return False
