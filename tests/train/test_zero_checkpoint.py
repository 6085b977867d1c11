"""The ZeRO-3 checkpoint reader's memory behaviour and its errors (its values are checked against
DeepSpeed's own ``zero_to_fp32`` on real checkpoints in tests/distributed/test_elastic.py)."""

from __future__ import annotations

import sys

import pytest
import torch

from megavg.train.zero_checkpoint import ZeroCheckpoint, load_mapped, partition_numel, release_pages
from megavg.utils.errors import UserError
from megavg.utils.memory import rss_mib


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise page release is Linux-only")
def test_reading_a_mapped_file_slice_by_slice_keeps_rss_flat(tmp_path):
    """128 MiB read in 4 MiB slices: resident memory grows by about one slice, not by the file."""
    torch.save({"flat": torch.ones(32 * 2**20)}, tmp_path / "big.pt")  # 128 MiB of fp32
    flat = load_mapped(tmp_path / "big.pt")["flat"]
    before = rss_mib()
    total = 0.0
    for view in flat.split(2**20):
        total += float(view.clone().sum())
        release_pages(view)
    grown = rss_mib() - before
    assert total == flat.numel()
    assert grown < 32, f"RSS grew by {grown:.0f} MiB reading a 128 MiB file"


def test_partition_numel_pads_to_the_world_size():
    assert [partition_numel(n, 4) for n in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]


def test_incomplete_tag_is_one_user_error(tmp_path):
    (tmp_path / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"")
    with pytest.raises(UserError, match="not a complete ZeRO checkpoint"):
        ZeroCheckpoint(tmp_path)


def test_unreadable_file_is_one_user_error(tmp_path):
    (tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"not a zip")
    (tmp_path / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="unreadable DeepSpeed checkpoint file"):
        ZeroCheckpoint(tmp_path)
