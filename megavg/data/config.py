"""Data configuration: the ``data:`` section of the training config tree."""

from __future__ import annotations

import dataclasses
from typing import Literal

from megavg.utils.errors import UserError


@dataclasses.dataclass
class DataConfig:
    """Where the shards are and how clips become batches (per data-parallel rank).

    ``shards`` is a folder of ``*.tar``, a brace pattern (``/d/shard-{000000..000009}.tar``) or a glob.
    Video clips hold ``frames`` frames taken every ``frame_stride`` source frames; ``frames`` must be a
    multiple of ``chunk`` (the model's temporal chunk). Each batch is resized and centre-cropped to one
    (H, W) bucket: the bucket nearest in aspect ratio to most of its clips; ``buckets`` empty means the
    single bucket ``size``.
    """

    shards: str = ""
    kind: Literal["video", "latent"] = "video"
    frames: int = 8
    chunk: int = 1
    frame_stride: int = 1
    size: tuple[int, int] = (64, 64)
    buckets: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    batch_size: int = 1
    num_workers: int = 0
    shuffle_buffer: int = 64

    def __post_init__(self) -> None:
        for name in ("frames", "chunk", "frame_stride", "batch_size", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise UserError(f"config data.{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise UserError(f"config data.num_workers: must be >= 0, got {self.num_workers}")
        if self.frames % self.chunk:
            raise UserError(f"config data.frames: {self.frames} is not a multiple of data.chunk={self.chunk}")
        for h, w in self.bucket_sizes:
            if h < 1 or w < 1:
                raise UserError(f"config data.size/buckets: bucket {(h, w)} must be positive")

    @property
    def bucket_sizes(self) -> list[tuple[int, int]]:
        """The (H, W) buckets batches are cropped to."""
        return [tuple(b) for b in self.buckets] or [tuple(self.size)]
