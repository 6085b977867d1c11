"""Frame-by-frame video reading and writing with PyAV, so runners never hold a whole clip in memory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
import torch

from megavg.utils.errors import UserError
from megavg.utils.io import atomic_file


def read_pieces(path: str | os.PathLike, piece: int, max_frames: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the video at ``path`` as float32 pieces 1,3,n,H,W in [-1, 1], ``n <= piece`` frames each."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    frames: list[np.ndarray] = []
    count = 0
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: has no video stream")
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))  # H, W, 3 uint8
                count += 1
                if len(frames) == piece:
                    yield _to_tensor(frames)
                    frames = []
                if max_frames is not None and count >= max_frames:
                    break
    except av.error.FFmpegError as err:
        raise UserError(f"{path}: not a decodable video ({err})") from None
    if frames:
        yield _to_tensor(frames)
    if count == 0:
        raise UserError(f"{path}: no decodable video frame")


def frame_rate(path: str | os.PathLike) -> Fraction:
    """Average frame rate of the video at ``path`` (25 when the container does not say).

    Also the up-front check of an input: a missing, empty or undecodable file is a UserError.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        with av.open(os.fspath(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: has no video stream")
            rate = container.streams.video[0].average_rate
    except av.error.FFmpegError as err:
        raise UserError(f"{path}: not a decodable video ({err})") from None
    return Fraction(rate) if rate else Fraction(25)


def _to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    video = torch.from_numpy(np.stack(frames)).float()  # n, H, W, 3
    return (video / 127.5 - 1.0).permute(3, 0, 1, 2).unsqueeze(0)  # 1, 3, n, H, W


class VideoWriter:
    """Write 1,3,n,H,W pieces in [-1, 1] to an H.264 MP4; the file appears only when the writer closes."""

    def __init__(self, path: str | os.PathLike, fps: Fraction, crf: int = 18):
        self._atomic = atomic_file(path)
        self._tmp = self._atomic.__enter__()
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf)}
        self._sized = False

    def write(self, piece: torch.Tensor) -> None:
        frames = ((piece[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # 3, n, H, W
        frames = frames.permute(1, 2, 3, 0).cpu().numpy()  # n, H, W, 3
        if not self._sized:  # H.264 with yuv420p needs even sizes
            self._stream.height, self._stream.width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
            self._sized = True
        for frame in frames:
            image = av.VideoFrame.from_ndarray(
                frame[: self._stream.height, : self._stream.width], format="rgb24"
            )
            self._container.mux(self._stream.encode(image))

    def close(self, ok: bool = True) -> None:
        """Flush and publish the file (``ok``) or discard it."""
        if ok:
            self._container.mux(self._stream.encode())
        self._container.close()
        exc = None if ok else RuntimeError("discarded")
        self._atomic.__exit__(type(exc) if exc else None, exc, None)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close(ok=exc_type is None)
        return False
