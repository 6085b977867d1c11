"""Checkpoint bookkeeping without processes: ``latest``, pruning, and consolidation errors."""

from __future__ import annotations

import pytest

from megavg.train.checkpoint import Checkpointer, read_latest, tag_of
from megavg.train.consolidate import consolidate
from megavg.utils.errors import UserError


def test_prune_keeps_newest_complete_and_drops_partial_newer_tags(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2, exclude_frozen=True)
    for step in (10, 20, 30, 40):
        (ckpt.dir / tag_of(step)).mkdir(parents=True)
    ckpt._prune(30)  # 40 is a save that crashed before `latest` moved
    assert sorted(p.name for p in ckpt.dir.iterdir()) == [tag_of(20), tag_of(30)]


def test_latest_must_name_an_existing_tag(tmp_path):
    assert read_latest(tmp_path) is None
    (tmp_path / "latest").write_text("step_00000005\n")
    with pytest.raises(UserError, match="not a checkpoint folder"):
        read_latest(tmp_path)
    (tmp_path / "step_00000005").mkdir()
    assert read_latest(tmp_path) == "step_00000005"


def test_consolidate_without_a_complete_checkpoint_is_a_user_error(tmp_path):
    (tmp_path / "checkpoints" / tag_of(3)).mkdir(parents=True)  # shards but no `latest`
    with pytest.raises(UserError, match="no complete checkpoint"):
        consolidate(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
