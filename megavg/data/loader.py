"""Per-rank batch iterator over webdataset shards: split by data-parallel rank, shuffled, endless.

Sample stream of one data-parallel rank (one stream per loader worker, see below):

    shards of this rank --(epochs, shard order from seed; seeded shuffle buffer: stream.py)-->
    raw position i = 0, 1, 2, ... --(decode: clip + resize; corrupt -> next good one)--> slots -->
    batch s = slots [s*B, (s+1)*B)

Everything is a function of (seed, dp_rank, num_workers): SP ranks of one group pass the same dp_rank and
get identical batches, and ``start_step=k`` starts at raw position k*B, replaying the shuffle on positions
(reading only the samples left in the shuffle buffer), so a resumed run gets the batches k, k+1, ... of
an uninterrupted one. A corrupt sample's slot is filled by the next good sample, so positions never
shift. Corrupt means what ``stream.SAMPLE_ERRORS`` lists (undecodable or cut-short video, bad json, a
missing member); any other exception is a bug and stops the loader. The stream never ends, so every
rank yields the same number of batches (no DDP hang); the trainer decides how many steps to take.

Bucketed latent sets (:mod:`megavg.data.buckets`): the rank keeps one such stream per bucket (over its
share of that bucket's shards) and batch s takes B slots of the stream of bucket ``order.bucket(s)``, a
seeded global order shared by all ranks; resuming at step k skips in each bucket's stream the batches it
gave before k. A set without recorded buckets is one bucket (the stream above, unchanged).

With ``num_workers = W > 0`` the rank's shards are split over W streams and batch s comes from stream
s mod W (torch's DataLoader returns worker batches round-robin); the batches then differ from W = 0 but
are still deterministic and resumable for the same W.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from megavg.data.buckets import BucketOrder
from megavg.data.config import DataConfig
from megavg.data.latents import collate_latents, decode_latent_sample
from megavg.data.shards import list_shards, sample_counts, shard_buckets, split_shards
from megavg.data.stream import SAMPLE_ERRORS, StreamStats, shuffled_samples
from megavg.data.video import (
    VIDEO_EXTS,
    VideoError,
    clip_start,
    decode_frames,
    decode_size,
    nearest_bucket,
    resize_crop,
)
from megavg.utils.errors import UserError

UNRECORDED = "-"  # the bucket of shards whose index records none (one shape, as before buckets)


@dataclasses.dataclass
class LoaderStats:
    """What the loader did so far (summed over its workers)."""

    batches: int = 0
    skipped: int = 0  # corrupt samples skipped (each revisit counts)
    shard_errors: int = 0  # unreadable tar data (truncated or broken shards)


class ShardLoader:
    """Endless iterator of batches for one data-parallel rank; see the module docstring."""

    def __init__(self, cfg: DataConfig, dp_rank: int, dp_size: int, seed: int, start_step: int = 0):
        if not 0 <= dp_rank < dp_size:
            raise UserError(f"data-parallel rank {dp_rank} is outside [0, {dp_size})")
        if start_step < 0:
            raise UserError(f"start step must be >= 0, got {start_step}")
        urls = list_shards(cfg.shards, cfg.kind)
        sizes = dict(zip(urls, sample_counts(urls)))
        groups = bucket_groups(urls)
        parts = {}
        for bucket in groups:
            mine = rank_shards(cfg, groups, bucket, dp_rank, dp_size)
            parts[bucket] = mine, [sizes[u] for u in mine]
        order = BucketOrder({b: sum(sizes[u] for u in group) for b, group in groups.items()}, f"seed{seed}")
        self.cfg, self.stats, self.order = cfg, LoaderStats(), order
        self.shards = [u for mine, _ in parts.values() for u in mine]
        self._dataset = RankStream(cfg, parts, order, f"seed{seed}/dp{dp_rank}", start_step)

    @property
    def skipped(self) -> int:
        """Corrupt samples skipped so far."""
        return self.stats.skipped

    def __iter__(self) -> Iterator[dict]:
        if self.cfg.num_workers == 0:
            source = iter(self._dataset)
        else:
            source = _one_line_errors(
                DataLoader(self._dataset, batch_size=None, num_workers=self.cfg.num_workers)
            )
        for batch in source:
            self.stats.skipped += int(batch.pop("_skipped"))
            self.stats.shard_errors += int(batch.pop("_shard_errors"))
            self.stats.batches += 1
            yield batch


def bucket_groups(urls: list[str]) -> dict[str, list[str]]:
    """The shards of each bucket (shards whose index records no bucket: :data:`UNRECORDED`)."""
    groups: dict[str, list[str]] = {}
    for url, bucket in zip(urls, shard_buckets(urls)):
        groups.setdefault(UNRECORDED if bucket is None else bucket, []).append(url)
    return groups


def rank_shards(cfg: DataConfig, groups: dict[str, list[str]], bucket: str, dp_rank: int, dp_size: int):
    """The shards of ``bucket`` data-parallel rank ``dp_rank`` reads; a rank or one of its loader workers
    left without a shard is a :class:`UserError`."""
    where = "" if len(groups) == 1 else f" (bucket {bucket})"
    mine = split_shards(groups[bucket], dp_rank, dp_size, f"data-parallel ranks{where}")
    split_shards(mine, 0, max(1, cfg.num_workers), f"loader workers of data-parallel rank {dp_rank}{where}")
    return mine


def check_shards(cfg: DataConfig, dp_size: int) -> None:
    """Pre-launch: every data-parallel rank of ``dp_size`` and each of its loader workers gets a shard of
    every bucket (what :class:`ShardLoader` would find on each rank once the run has started)."""
    groups = bucket_groups(list_shards(cfg.shards, cfg.kind))
    for bucket in groups:
        for dp_rank in range(dp_size):
            rank_shards(cfg, groups, bucket, dp_rank, dp_size)


def _one_line_errors(batches: DataLoader) -> Iterator[dict]:
    """Re-raise a worker's UserError with its own message (torch adds the worker's traceback)."""
    try:
        yield from batches
    except UserError as err:
        raise UserError(str(err).strip().splitlines()[-1].partition("UserError: ")[2] or str(err)) from None


def build_loader(cfg: DataConfig, dp_rank: int, dp_size: int, seed: int, start_step: int = 0) -> ShardLoader:
    """The batch iterator of data-parallel rank ``dp_rank`` of ``dp_size``; ``start_step`` = batches this
    rank already consumed (micro-batches), so the first batch is the one an uninterrupted run yields next.

    Video batches: {"video": float32 [B, 3, T, H, W] in [-1, 1], "caption": [str], "key": [str]}.
    Latent batches: {"latents": [B, C, T, H, W], "text": [B, 512, D] (zero-padded as the sampler pads it),
    optional "image", "caption", "key"}.
    """
    return ShardLoader(cfg, dp_rank, dp_size, seed, start_step)


class RankStream(IterableDataset):
    """The batches of one rank (or of one loader worker of it), as a torch IterableDataset: one sample
    stream per bucket (``parts``: bucket -> this rank's shards and their sizes); batch ``s`` takes
    ``batch_size`` slots of bucket ``order.bucket(s)``'s stream."""

    def __init__(self, cfg: DataConfig, parts: dict, order: BucketOrder, seed: str, start_step: int):
        super().__init__()
        self.cfg, self.parts, self.order, self.seed, self.start_step = cfg, parts, order, seed, start_step

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        role = (worker + self.start_step) % workers  # stream that owns batch start_step + worker
        key = f"{self.seed}/stream{role}of{workers}"
        taken = self.order.counts_before(self.start_step, role, workers)  # batches per bucket before
        collate = self._video_fns(key)[1] if self.cfg.kind == "video" else _collate
        streams, stats = {}, []
        for bucket, (urls, sizes) in self.parts.items():
            stats.append(StreamStats())
            bucket_key = key if len(self.parts) == 1 else f"{key}/bucket{bucket}"
            skip = taken[bucket] * self.cfg.batch_size
            streams[bucket] = self._slots(
                bucket_key, urls[role::workers], sizes[role::workers], skip, stats[-1]
            )
        reported = StreamStats()
        for step in itertools.count(self.start_step + worker, workers):
            batch = collate(list(itertools.islice(streams[self.order.bucket(step)], self.cfg.batch_size)))
            skipped, errors = sum(st.skipped for st in stats), sum(st.shard_errors for st in stats)
            batch["_skipped"] = skipped - reported.skipped  # new since the last batch
            batch["_shard_errors"] = errors - reported.shard_errors
            reported.skipped, reported.shard_errors = skipped, errors
            yield batch

    def _slots(self, key: str, urls: list[str], sizes: list[int], skip: int, stats: StreamStats) -> Iterator:
        """Decoded samples of one stream from raw position ``skip`` on (corrupt ones filled forward)."""
        bufsize = self.cfg.shuffle_buffer
        raw = shuffled_samples(urls, sizes, key, bufsize, skip, stats)
        decode = self._video_fns(key)[0] if self.cfg.kind == "video" else _decode_latent
        return fill_forward(enumerate(raw, start=skip), decode, stats, bufsize)

    def _video_fns(self, key: str) -> tuple[Callable, Callable]:
        cfg, buckets = self.cfg, self.cfg.bucket_sizes

        def decode(raw: dict, index: int) -> dict:
            meta, data = video_sample_parts(raw)
            rng = np.random.default_rng(_seed_int(f"{key}/clip{index}"))
            start = clip_start(rng, meta["frames"], cfg.frames, cfg.frame_stride)
            size = decode_size(meta["height"], meta["width"], buckets)  # displayed size
            frames = decode_frames(
                data, start, cfg.frames, cfg.frame_stride, size, raw["__key__"], meta["rotation"]
            )
            return {"frames": frames, "caption": meta["caption"], "key": raw["__key__"]}

        def collate(items: list[dict]) -> dict:
            votes = collections.Counter(nearest_bucket(*it["frames"].shape[1:3], buckets) for it in items)
            bucket = max(buckets, key=lambda b: votes[b])  # most common; ties: first in the list
            video = torch.stack([resize_crop(it["frames"], bucket) for it in items])  # B, 3, T, H, W
            captions, keys = [it["caption"] for it in items], [it["key"] for it in items]
            return {"video": video, "caption": captions, "key": keys}

        return decode, collate


def video_sample_parts(raw: dict) -> tuple[dict, bytes]:
    """(metadata with int frames/height/width/rotation and str caption, video bytes) of a raw video sample;
    VideoError when the json or the video member is missing or malformed."""
    meta = json.loads(raw["json"])
    data = next((raw[ext] for ext in VIDEO_EXTS if ext in raw), None)
    if data is None:
        raise VideoError(f"no video file ({'/'.join(VIDEO_EXTS)}) in sample")
    try:
        ints = {name: int(meta[name]) for name in ("frames", "height", "width")}
        ints["rotation"] = int(meta.get("rotation", 0))  # none in shards written before rotation support
    except (TypeError, ValueError) as err:
        raise VideoError(f"malformed sample metadata ({err})") from None
    return {**ints, "caption": str(meta.get("caption", ""))}, data


def _decode_latent(raw: dict, index: int) -> dict:
    return {**decode_latent_sample(raw), "key": raw["__key__"]}


def _collate(items: list[dict]) -> dict:
    return {**collate_latents(items), "key": [it["key"] for it in items]}


def _seed_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def fill_forward(indexed: Iterator, decode: Callable, stats: StreamStats, bufsize: int) -> Iterator[dict]:
    """Decode (position, raw sample) pairs; a corrupt sample is counted, warned about once, and its
    slot filled by the next good sample. Raises UserError when no sample of a whole epoch decodes."""
    pending, failures = 0, 0
    for index, raw in indexed:
        try:
            if "__error__" in raw:
                raise UserError(raw["__error__"])
            item = decode(raw, index)
        except SAMPLE_ERRORS as err:  # a broken sample must not stop training; a bug in megavg must
            pending, failures, stats.skipped = pending + 1, failures + 1, stats.skipped + 1
            name, shard = raw.get("__key__", "?"), raw.get("__url__", "?")
            stats.warn_once(f"{shard}:{name}", f"skipping corrupt sample {name} in shard {shard}: {err!r}")
            if stats.samples_per_epoch is not None and failures > stats.samples_per_epoch + bufsize:
                raise UserError(f"no sample decodes (last: {name} in {shard}: {err!r})") from None
            continue
        yield from itertools.repeat(item, pending + 1)
        pending, failures = 0, 0
