"""The checkpoint manifest comes from what every rank reports it wrote, not from rank 0's listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megavg.train import ckpt_integrity as ci
from tests.distributed.launch import torchrun
from tests.distributed.manifest_worker import FILES

WORKER = Path(__file__).with_name("manifest_worker.py")


@pytest.mark.distributed
def test_manifest_lists_files_missing_from_rank_0s_stale_listing(tmp_path):
    torchrun(WORKER, 2, tmp_path)
    tag = tmp_path / "step_00000003"
    manifest = json.loads((tag / ci.MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(FILES[0] + FILES[1])
    for name, rec in manifest["files"].items():
        assert rec == ci.describe(tag, [name])[name]  # size and SHA-256 of the file as written
    assert ci.problems(tag) == []
    (tag / FILES[1][0]).unlink()  # and a lost file of rank 1 is now caught
    assert ci.problems(tag) == [f"{tag / FILES[1][0]}: missing (listed in {ci.MANIFEST})"]


def test_hash_plan_hashes_each_file_once_on_a_rank_that_sees_it():
    listings = [["a", "b", "c"], ["b", "c", "d"], ["d"]]
    plan = ci.hash_plan(listings)
    assert sorted(n for names in plan for n in names) == ["a", "b", "c", "d"]
    assert all(name in listings[rank] for rank, names in enumerate(plan) for name in names)
    assert max(map(len, plan)) == 2
