"""The reproduction's world: procedurally generated captioned clips, deterministic from a seed.

    clip = render(Scene("circle", "red", "left", "dark"), frames=16, size=64)   # uint8 [16, 64, 64, 3]
    scenes = split_scenes("train", count=1024, seed=0)     # held-out: split_scenes("heldout", ...)

One object (a shape in one of six well-separated colours) moves in a straight line in one of four
directions over a plain background. The motion is large (the object crosses half the frame in a clip)
so that its direction is visible on the teacher's 8x8 latent grid and on the student's 2x2 one. Captions
are ``"a red circle moves left on dark"``. The held-out split uses other seeds and, in addition, a fixed
sixth of all captions (:func:`heldout_captions`) that the training split never shows.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

# RGB palette: pairwise distances >= ~150, far from both backgrounds (the detector snaps to it).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 235),
    "yellow": (235, 220, 50),
    "magenta": (215, 50, 215),
    "cyan": (50, 215, 225),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"dark": (25, 25, 25), "light": (150, 150, 150)}
SHAPES = ("square", "circle", "diamond")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
OBJECT = (
    0.4  # object side as a fraction of the frame (large: the autoencoders learn it in a few hundred steps)
)
TRAVEL = 0.5  # distance covered over the clip, as a fraction of the frame
HELDOUT_EVERY = 6  # one caption in six is held out


@dataclasses.dataclass(frozen=True)
class Scene:
    """What one clip shows; ``x``/``y`` (in [0, 1]) place the start inside the free band."""

    shape: str
    colour: str
    direction: str
    background: str
    x: float = 0.5
    y: float = 0.5

    @property
    def caption(self) -> str:
        return caption_of(self.shape, self.colour, self.direction, self.background)


def caption_of(shape: str, colour: str, direction: str, background: str) -> str:
    return f"a {colour} {shape} moves {direction} on {background}"


def all_captions() -> list[tuple[str, str, str, str]]:
    """Every (shape, colour, direction, background), in a fixed order."""
    return list(itertools.product(SHAPES, COLOURS, DIRECTIONS, BACKGROUNDS))


def heldout_captions() -> set[tuple[str, str, str, str]]:
    """The combinations never shown in training: every HELDOUT_EVERY-th after a fixed shuffle."""
    combos = all_captions()
    order = np.random.default_rng(12345).permutation(len(combos))
    return {combos[i] for i in order[::HELDOUT_EVERY]}


def split_scenes(split: str, count: int, seed: int) -> list[Scene]:
    """``count`` scenes of ``split`` (``train``: seen captions; ``heldout``: held-out captions), each
    caption combination equally often (round robin), start positions drawn from ``seed``."""
    held = heldout_captions()
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be train or heldout, got {split!r}")
    combos = [c for c in all_captions() if (c in held) == (split == "heldout")]
    rng = np.random.default_rng([seed, split == "heldout"])
    order = rng.permutation(len(combos))
    scenes = []
    for i in range(count):
        shape, colour, direction, background = combos[order[i % len(combos)]]
        x, y = rng.uniform(0, 1, size=2)
        scenes.append(Scene(shape, colour, direction, background, float(x), float(y)))
    return scenes


def shape_mask(shape: str, side: int) -> np.ndarray:
    """A boolean [side, side] mask of the shape."""
    c = (np.arange(side) + 0.5) / side - 0.5  # pixel centres in [-0.5, 0.5]
    yy, xx = np.meshgrid(c, c, indexing="ij")
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "circle":
        return xx**2 + yy**2 <= 0.25
    if shape == "diamond":
        return np.abs(xx) + np.abs(yy) <= 0.5
    raise ValueError(f"unknown shape {shape!r}")


def trajectory(scene: Scene, frames: int, size: int) -> np.ndarray:
    """Top-left corner [frames, 2] (row, col) of the object in each frame, in pixels."""
    side, travel = round(OBJECT * size), TRAVEL * size
    dx, dy = DIRECTIONS[scene.direction]
    free = size - side  # room for the top-left corner
    # along the motion the start leaves room for the travel; across it the position is free
    along = (free - travel) * (scene.x if dx or dy else 0.0)
    start_col = along if dx > 0 else (free - along if dx < 0 else scene.x * free)
    start_row = along if dy > 0 else (free - along if dy < 0 else scene.y * free)
    t = np.arange(frames) / max(frames - 1, 1) * travel  # frames
    return np.stack([start_row + dy * t, start_col + dx * t], axis=1)


def render(scene: Scene, frames: int, size: int) -> np.ndarray:
    """The clip as uint8 [frames, size, size, 3]."""
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    video[:] = BACKGROUNDS[scene.background]
    side = round(OBJECT * size)
    mask = shape_mask(scene.shape, side)
    for f, (row, col) in enumerate(np.rint(trajectory(scene, frames, size)).astype(int)):
        window = video[f, row : row + side, col : col + side]  # side, side, 3
        window[mask] = COLOURS[scene.colour]
    return video
