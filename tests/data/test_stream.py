"""The shuffled sample stream: epochs cover every sample once, resume replays positions without reading."""

from __future__ import annotations

import itertools
import json

import pytest

from megavg.data import stream
from megavg.data.shards import count_samples, sample_counts, write_shards
from megavg.data.stream import StreamStats, shuffled_samples


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    """5 shards of 3 json-only samples (keys k00..k14)."""
    out = tmp_path_factory.mktemp("tiny") / "shards"
    samples = ({"__key__": f"k{i:02d}", "json": json.dumps({"i": i}).encode()} for i in range(15))
    write_shards(samples, out, "video", samples_per_shard=3)
    urls = sorted(str(p) for p in out.glob("*.tar"))
    return urls, sample_counts(urls)


def keys(urls, sizes, bufsize, skip, n, seed="s"):
    out = shuffled_samples(urls, sizes, seed, bufsize, skip, StreamStats())
    return [sample["__key__"] for sample in itertools.islice(out, n)]


def test_counts_from_index_and_from_tar_headers_agree(tiny_shards):
    urls, sizes = tiny_shards
    assert sizes == [3] * 5 == [count_samples(u) for u in urls]


def test_each_epoch_is_a_permutation_without_shuffle_buffer(tiny_shards):
    urls, sizes = tiny_shards
    seq = keys(urls, sizes, bufsize=1, skip=0, n=45)
    epochs = [seq[i : i + 15] for i in range(0, 45, 15)]
    assert all(sorted(e) == [f"k{i:02d}" for i in range(15)] for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # shard order redrawn every epoch


@pytest.mark.parametrize("bufsize", [1, 4, 40])  # 40: the buffer spans several epochs
def test_resume_at_any_output_continues_the_same_sequence(tiny_shards, bufsize):
    urls, sizes = tiny_shards
    full = keys(urls, sizes, bufsize, skip=0, n=80)
    for skip in (1, 7, 15, 31, 60):
        assert keys(urls, sizes, bufsize, skip, 20) == full[skip : skip + 20]
    assert keys(urls, sizes, bufsize, 0, 20, seed="other") != full[:20]


def test_resume_reads_only_the_buffered_samples(tiny_shards, monkeypatch):
    urls, sizes = tiny_shards
    reads = []
    real = stream.read_shard
    monkeypatch.setattr(stream, "read_shard", lambda url, *a, **k: reads.append(url) or real(url, *a, **k))
    assert len(keys(urls, sizes, bufsize=4, skip=100_000, n=1)) == 1  # ~6700 epochs later
    assert len(reads) <= 4 + 1  # shards holding the 4 buffered samples, then the current one
