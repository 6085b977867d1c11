"""Prompt accuracy without a learned model: read a clip's object colour and direction of motion.

    colour, direction = detect(frames)                  # frames: uint8 [T, H, W, 3]
    accuracy = prompt_accuracy(videos, captions)        # fraction whose (colour, direction) match

The background is the median colour of the first frame's border. Foreground pixels differ from it by more
than ``threshold`` (RGB distance). The colour is the palette colour nearest the median foreground pixel;
the direction is the sign of the larger of the two slopes of a least-squares line through the
foreground centroids over time. A clip with too little foreground gives ``None`` (a miss).
"""

from __future__ import annotations

import numpy as np

from megavg.repro.world import COLOURS, DIRECTIONS

THRESHOLD = 60.0  # RGB distance from the background that counts as foreground
MIN_PIXELS = 4  # foreground pixels a frame needs to give a centroid
PALETTE = np.array(list(COLOURS.values()), dtype=np.float64)  # K, 3


def background_colour(frame: np.ndarray) -> np.ndarray:
    """Median RGB [3] of a frame's one-pixel border."""
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]]).astype(np.float64)
    return np.median(border, axis=0)


def foreground(frames: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Boolean [T, H, W]: pixels farther than ``threshold`` from the background colour."""
    background = background_colour(frames[0])
    return np.linalg.norm(frames.astype(np.float64) - background, axis=-1) > threshold


def detect_colour(frames: np.ndarray, mask: np.ndarray) -> str | None:
    """The palette name nearest the median foreground pixel, None without foreground."""
    if mask.sum() < MIN_PIXELS:
        return None
    median = np.median(frames[mask].astype(np.float64), axis=0)  # 3
    return list(COLOURS)[int(np.argmin(np.linalg.norm(PALETTE - median, axis=1)))]


def detect_direction(mask: np.ndarray) -> str | None:
    """Direction of the foreground centroid's straight-line fit over time, None if under 2 frames show it."""
    rows, cols, times = [], [], []
    for t, frame in enumerate(mask):
        ys, xs = np.nonzero(frame)
        if len(ys) >= MIN_PIXELS:
            rows.append(ys.mean())
            cols.append(xs.mean())
            times.append(t)
    if len(times) < 2:
        return None
    slope_row = np.polyfit(times, rows, 1)[0]
    slope_col = np.polyfit(times, cols, 1)[0]
    step = (int(np.sign(slope_col)), 0) if abs(slope_col) >= abs(slope_row) else (0, int(np.sign(slope_row)))
    return next((name for name, d in DIRECTIONS.items() if d == step), None)


def detect(frames: np.ndarray) -> tuple[str | None, str | None]:
    """(colour, direction) of the object in a uint8 clip [T, H, W, 3]."""
    mask = foreground(frames)
    return detect_colour(frames, mask), detect_direction(mask)


def caption_target(caption: str) -> tuple[str, str]:
    """(colour, direction) a world caption asks for."""
    words = caption.split()
    colour = next(w for w in words if w in COLOURS)
    direction = next(w for w in words if w in DIRECTIONS)
    return colour, direction


def prompt_accuracy(videos: list[np.ndarray], captions: list[str]) -> dict[str, float]:
    """Fractions of clips whose detected colour, direction and both match their captions."""
    if len(videos) != len(captions) or not videos:
        raise ValueError(f"prompt accuracy: {len(videos)} videos for {len(captions)} captions")
    hits = np.array(
        [[a == b for a, b in zip(detect(v), caption_target(c))] for v, c in zip(videos, captions)]
    )
    return {
        "colour": float(hits[:, 0].mean()),
        "direction": float(hits[:, 1].mean()),
        "both": float(hits.all(axis=1).mean()),
    }
