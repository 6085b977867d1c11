"""The global bucket order: which bucket every rank's batch of a step comes from.

A latent shard set may hold several buckets (latent grids, :func:`megavg.data.latents.latent_bucket`).
Batch ``s`` of every data-parallel rank (and of every SP rank, which share their DP rank's batches) comes
from bucket ``order.bucket(s)``: independent draws with probabilities proportional to the buckets'
sample counts over the whole set (from index.json, so each rank knows the order without reading other
ranks' shards), seeded by the run's seed alone. Draws come in chunks of ``CHUNK`` steps, each chunk from
its own seeded generator, so any step's bucket is found without drawing the steps before it; counting
the batches each bucket gave before a resumed step draws those chunks once.
"""

from __future__ import annotations

import hashlib

import numpy as np

from megavg.utils.errors import UserError

CHUNK = 4096


class BucketOrder:
    """Seeded sequence of bucket names, one per step; ``counts`` = samples per bucket (all ranks)."""

    def __init__(self, counts: dict[str, int], seed: str):
        if not counts or any(n < 1 for n in counts.values()):
            raise UserError(f"bucket sample counts must be positive, got {counts}")
        self.names = sorted(counts)
        total = sum(counts[name] for name in self.names)
        self.probs = np.array([counts[name] / total for name in self.names])
        self.seed = seed
        self._cached: tuple[int, np.ndarray] | None = None

    def _chunk(self, index: int) -> np.ndarray:
        """Bucket indices of steps [index * CHUNK, (index + 1) * CHUNK)."""
        if self._cached is None or self._cached[0] != index:
            digest = hashlib.sha256(f"{self.seed}/buckets/chunk{index}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            self._cached = index, rng.choice(len(self.names), size=CHUNK, p=self.probs)
        return self._cached[1]

    def bucket(self, step: int) -> str:
        """The bucket of step ``step`` (0-based batch index)."""
        if len(self.names) == 1:
            return self.names[0]
        return self.names[self._chunk(step // CHUNK)[step % CHUNK]]

    def counts_before(self, step: int, role: int = 0, every: int = 1) -> dict[str, int]:
        """Per bucket, the steps ``s < step`` with ``s % every == role`` that drew it (the batches a
        loader stream owning those steps took from it before ``step``)."""
        counts = dict.fromkeys(self.names, 0)
        if len(self.names) == 1:
            counts[self.names[0]] = len(range(role, step, every))
            return counts
        for first in range(0, step, CHUNK):
            steps = np.arange(first, min(step, first + CHUNK))
            drawn = self._chunk(first // CHUNK)[steps - first][steps % every == role]
            for index, n in zip(*np.unique(drawn, return_counts=True)):
                counts[self.names[index]] += int(n)
        return counts
