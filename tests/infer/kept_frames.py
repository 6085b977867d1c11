"""Keep the uint8 frames every video file was given, beside it (``OUT.frames.npy``).

libx264 does not always give the same bytes for the same frames in a process that has run torch (seen at
32x32 and 64x64 with one thread too; 128x128 was stable), so a test that asks "are these the same videos"
compares what megavg hands the encoder, not what the encoder made of it. ``install()`` patches this
process (``install(monkeypatch)``: for one test); ``write_sitecustomize(folder)`` makes every Python
started with ``folder`` on ``PYTHONPATH`` do the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import megavg.infer.video_io as video_io

_write_frames = video_io.VideoWriter.write_frames


def _keep(self, frames, times=None):
    self._kept = [*getattr(self, "_kept", []), np.asarray(frames)]
    np.save(f"{self.path}.frames.npy", np.concatenate(self._kept))
    return _write_frames(self, frames, times)


def install(monkeypatch=None) -> None:
    """Patch the writer for this process (with ``monkeypatch``: until the test's end or its ``undo``)."""
    if monkeypatch is None:
        video_io.VideoWriter.write_frames = _keep
    else:
        monkeypatch.setattr(video_io.VideoWriter, "write_frames", _keep)


def write_sitecustomize(folder: Path, extra: str = "") -> None:
    """A ``sitecustomize.py`` in ``folder`` that installs the hook (the repository must be importable)."""
    folder.mkdir(parents=True, exist_ok=True)
    hook = "from tests.infer.kept_frames import install\ninstall()\n"
    (folder / "sitecustomize.py").write_text(extra + hook)


def written_frames(path) -> np.ndarray:
    """The uint8 frames (n, H, W, 3) handed to the writer of ``path``."""
    return np.load(f"{path}.frames.npy")
