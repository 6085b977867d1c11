"""A corpus of damaged and unusual tiny videos, written with PyAV once per test session.

``video_corpus()`` returns a :class:`Corpus`: ``bad`` maps a name to a path that every reader must
refuse (one ``error:`` line naming it), ``odd`` maps a name to an :class:`Odd` video that must come out
with its frames, displayed size and timing intact. Frames are tiny (at most 32x24) so the tests are fast.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


@dataclasses.dataclass
class Odd:
    """An unusual but valid video and what a reader must see: ``frames`` upright uint8 [T, H, W, 3]
    (what was encoded, turned as a player shows it) and each frame's time in seconds."""

    path: Path
    frames: np.ndarray
    times: list[Fraction]
    rotation: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """Displayed (H, W)."""
        return self.frames.shape[1], self.frames.shape[2]


@dataclasses.dataclass
class Corpus:
    bad: dict[str, Path]
    odd: dict[str, Odd]
    good: Path  # one plain valid clip (32x24, 24 frames) to mix with bad ones


def pattern(count: int, height: int, width: int) -> np.ndarray:
    """uint8 [count, H, W, 3]: a dark frame with a bright top-left block (orientation shows) whose
    brightness changes from frame to frame (order shows)."""
    frames = np.full((count, height, width, 3), 30, np.uint8)
    for i in range(count):
        frames[i, : height // 2, : width // 3] = 120 + 100 * i // max(count - 1, 1)
    return frames


def noise(count: int, height: int, width: int) -> np.ndarray:
    """uint8 noise frames: every frame costs many bytes, so a cut lands inside the frame data."""
    return np.random.default_rng(0).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def write(
    path: Path,
    frames: np.ndarray,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    fmt: str | None = None,
    times_ms: list[int] | None = None,
    rotation: int | None = None,
    options: dict | None = None,
) -> Path:
    """Encode rgb24 (or rgba) ``frames``; ``times_ms`` gives each frame's time (default 12 fps)."""
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream(codec, rate=12)
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], pix_fmt
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgba" if image.shape[-1] == 4 else "rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def cut(source: Path, path: Path, fraction: float | None = None, at: int | None = None) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: at if at is not None else int(len(data) * fraction)])
    return path


def packet_end(source: Path, index: int) -> int:
    """Byte offset just after video packet ``index`` (in file order): a cut there is a clean cut."""
    with av.open(str(source)) as container:
        ends = sorted(p.pos + p.size for p in container.demux(video=0) if p.pos is not None and p.pos >= 0)
    return ends[index]


def bad_videos(root: Path, good: Path) -> dict[str, Path]:
    """Files every reader must refuse, by name."""
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n" * 40)
    (root / "random.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes())
    front = write(root / "src_front.mp4", noise(24, 24, 32), options={"movflags": "faststart"})
    back = write(root / "src_back.mp4", noise(24, 24, 32))  # index (moov) after the frames
    mkv = write(root / "src.mkv", noise(24, 24, 32), fmt="matroska")
    (root / "folder.mp4").mkdir()
    bad = {name: root / name for name in ("zero.mp4", "text.mp4", "random.mp4", "folder.mp4")}
    for fraction in (0.3, 0.7, 0.95):
        bad[f"front_cut{int(fraction * 100)}.mp4"] = cut(
            front, root / f"front_cut{int(fraction * 100)}.mp4", fraction
        )
    bad["front_cut_clean.mp4"] = cut(front, root / "front_cut_clean.mp4", at=packet_end(front, 17))
    bad["back_cut50.mp4"] = cut(back, root / "back_cut50.mp4", 0.5)  # inside the frames: no index at all
    bad["back_cut_index.mp4"] = cut(
        back, root / "back_cut_index.mp4", at=back.read_bytes().index(b"moov") + 200
    )
    bad["cut.mkv"] = cut(mkv, root / "cut.mkv", 0.9)
    bad["audio_only.mp4"] = write_audio_only(root / "audio_only.mp4")
    return bad


def odd_videos(root: Path) -> dict[str, Odd]:
    """Unusual valid videos, by name."""
    twelve_fps = [Fraction(i, 12) for i in range(6)]
    plain = {  # name: (frames written, codec, pix_fmt, container)
        "odd_size.mp4": (pattern(6, 11, 17), "libx264", "yuv444p", "mp4"),
        "one_frame.mp4": (pattern(1, 12, 16), "libx264", "yuv420p", "mp4"),
        "gray.mkv": (pattern(6, 12, 16), "ffv1", "gray", "matroska"),
        "ten_bit.mp4": (pattern(6, 12, 16), "libx264", "yuv420p10le", "mp4"),
        "alpha.mov": (_with_alpha(pattern(6, 9, 15)), "png", "rgba", "mov"),
    }
    odd = {}
    for name, (frames, codec, pix_fmt, fmt) in plain.items():
        path = write(root / name, frames, codec, pix_fmt, fmt)
        odd[name] = Odd(path, frames[..., :3], twelve_fps[: len(frames)])  # alpha is dropped
    gray = odd["gray.mkv"].frames.mean(axis=-1, keepdims=True).round().astype(np.uint8)
    odd["gray.mkv"].frames = np.repeat(gray, 3, axis=-1)
    stored = pattern(6, 16, 24)  # stored 24 wide x 16 high; a phone's "rotate=90" (display matrix -90)
    path = write(root / "rotated.mp4", stored, rotation=-90)
    odd["rotated.mp4"] = Odd(path, np.ascontiguousarray(np.rot90(stored, k=-1, axes=(1, 2))), twelve_fps, 270)
    times_ms = [0, 40, 120, 130, 300, 310, 600]
    path = write(root / "vfr.mp4", pattern(7, 12, 16), times_ms=times_ms)
    odd["vfr.mp4"] = Odd(path, pattern(7, 12, 16), [Fraction(t, 1000) for t in times_ms])
    return odd


def _with_alpha(frames: np.ndarray) -> np.ndarray:
    alpha = np.full(frames.shape[:-1] + (1,), 128, np.uint8)
    return np.concatenate([frames, alpha], axis=-1)


@functools.cache
def video_corpus() -> Corpus:
    """The corpus, written once per process into a temporary folder removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="megavg-corpus-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    (root / "bad").mkdir()
    (root / "odd").mkdir()
    good = write(root / "good.mp4", pattern(24, 24, 32))
    return Corpus(bad=bad_videos(root / "bad", good), odd=odd_videos(root / "odd"), good=good)
