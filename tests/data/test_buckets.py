"""Bucketed latent shard sets: the index records the buckets, every batch holds one bucket, all DP ranks
take the same bucket at the same step, bucket frequencies follow the sample counts, resume continues."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from megavg.data import DataConfig, build_loader, write_latent_shards
from megavg.data.buckets import CHUNK, BucketOrder

GRIDS = {"2x4x4": 12, "1x4x8": 4}  # bucket -> samples


def test_bucket_frequencies_follow_sample_counts():
    counts = {"a": 10, "b": 30, "c": 60}
    order = BucketOrder(counts, "seed7")
    n = CHUNK + 2000  # across a chunk boundary
    drawn = [order.bucket(s) for s in range(n)]
    total = sum(counts.values())
    expected = np.array([n * counts[b] / total for b in sorted(counts)])
    observed = np.array([drawn.count(b) for b in sorted(counts)])
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 13.82, (observed, expected)  # chi-square, 2 degrees of freedom, p = 0.001
    assert drawn[:300] != [BucketOrder(counts, "seed8").bucket(s) for s in range(300)]  # the seed matters
    assert drawn[-300:] == [BucketOrder(counts, "seed7").bucket(s) for s in range(n - 300, n)]


@pytest.mark.parametrize("every", [1, 3])
def test_counts_before_equal_a_plain_count(every):
    order = BucketOrder({"a": 1, "b": 2}, "s")
    for step in (0, 5, CHUNK + 17):
        for role in range(every):
            plain = {"a": 0, "b": 0}
            for s in range(role, step, every):
                plain[order.bucket(s)] += 1
            assert order.counts_before(step, role, every) == plain


@pytest.fixture(scope="module")
def two_buckets(tmp_path_factory):
    """12 samples of latent grid 2x4x4 and 4 of 1x4x8, interleaved, 2 per shard."""
    gen = torch.Generator().manual_seed(0)
    samples = []
    for i, grid in enumerate(itertools.chain(*[[g] * n for g, n in GRIDS.items()])):
        t, h, w = map(int, grid.split("x"))
        latents = torch.randn(4, t, h, w, generator=gen)
        samples.append({"latents": latents, "text": torch.randn(3, 8, generator=gen), "key": f"s{i:02d}"})
    samples = samples[::2] + samples[1::2]  # buckets arrive mixed
    out = tmp_path_factory.mktemp("buckets") / "lat"
    write_latent_shards(samples, out, samples_per_shard=2)
    return out


def grid(batch) -> str:
    return "x".join(map(str, batch["latents"].shape[-3:]))


def test_index_records_one_bucket_per_shard(two_buckets):
    index = json.loads((two_buckets / "index.json").read_text())
    assert index["buckets"] == GRIDS
    for entry in index["shards"]:
        assert entry["bucket"] in GRIDS and entry["samples"] == 2


def test_batches_single_bucket_and_in_lockstep_over_ranks(two_buckets):
    cfg = DataConfig(shards=str(two_buckets), kind="latent", batch_size=2, shuffle_buffer=3)
    loaders = [build_loader(cfg, dp_rank=r, dp_size=2, seed=3) for r in range(2)]
    runs = [list(itertools.islice(loader, 40)) for loader in loaders]
    order = BucketOrder(GRIDS, "seed3")
    for step, (a, b) in enumerate(zip(*runs)):
        assert grid(a) == grid(b) == order.bucket(step)  # one bucket per step, on every rank
        assert not set(a["key"]) & set(b["key"])  # DP ranks read disjoint shards
    grids = [grid(batch) for batch in runs[0]]
    assert set(grids) == set(GRIDS)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_bucket_order(two_buckets, workers):
    cfg = DataConfig(
        shards=str(two_buckets), kind="latent", batch_size=2, shuffle_buffer=3, num_workers=workers
    )
    straight = list(itertools.islice(build_loader(cfg, dp_rank=0, dp_size=1, seed=5), 14))
    resumed = list(itertools.islice(build_loader(cfg, dp_rank=0, dp_size=1, seed=5, start_step=9), 5))
    for a, b in zip(straight[9:], resumed, strict=True):
        assert a["key"] == b["key"]
        torch.testing.assert_close(a["latents"], b["latents"], rtol=0, atol=0)
