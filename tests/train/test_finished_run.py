"""A finished run answers at once: ``python -m megavg.train`` on a run whose latest checkpoint reached
``schedule.steps`` says so (and how to train longer) and exits without starting training; ``--check``
tells finished (exit 3) from not finished (exit 0) for tools/demo.sh."""

from __future__ import annotations

import logging
import sys

import pytest

from megavg.train import __main__ as train_main
from megavg.train.ckpt_integrity import describe, write_manifest
from megavg.train.config import dump_config, load_config
from tests.conftest import Catcher
from tests.distributed.launch import REPO


@pytest.fixture
def finished_run(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "shard-000000.tar").touch()
    run = tmp_path / "run"
    tag = run / "checkpoints" / "step_00000004"
    tag.mkdir(parents=True)
    config = str(REPO / "configs/train/dcaev_tiny_test.yaml")
    argv = ["--config", config, f"data.shards={shards}", f"run.dir={run}", "schedule.steps=4"]
    # an intact tag (manifest) written by this very config
    (tag / "config.yaml").write_text(dump_config(load_config(config, argv[2:])))
    (tag / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"weights")
    write_manifest(tag, describe(tag, sorted(p.name for p in tag.iterdir())), world_size=1)
    (run / "checkpoints" / "latest").write_text("step_00000004")
    return argv


def test_finished_run_says_so_without_training(finished_run, monkeypatch):
    handler = Catcher(logging.INFO)
    infos = handler.messages
    logging.getLogger("megavg").addHandler(handler)
    monkeypatch.setitem(sys.modules, "megavg.train.loop", None)  # importing the loop would fail
    try:
        for argv, code in ((finished_run, 0), (["--check", *finished_run], 3)):
            with pytest.raises(SystemExit) as stop:
                train_main.main(argv)
            assert stop.value.code == code
        train_main.main(["--check", *finished_run, "schedule.steps=8"])  # returns: 4 steps to go
    finally:
        logging.getLogger("megavg").removeHandler(handler)
    finished = [m for m in infos if "already finished (step 4 of schedule.steps=4)" in m]
    assert len(finished) == 2 and "schedule.steps=N, N > 4" in finished[0], infos
    assert infos[-1].endswith("4 of 8 steps done"), infos


@pytest.mark.parametrize("change", ["damaged", "model.args.latent_channels=8"], ids=["damaged", "other"])
def test_damaged_or_mismatched_checkpoint_is_not_called_finished(finished_run, change):
    """The normal start-up must see these: it falls back to an older tag, or names the mismatch."""
    argv = list(finished_run)
    if change == "damaged":  # same size, other bytes: the manifest's SHA-256 no longer matches
        tag = train_main.Path(argv[3].split("=", 1)[1]) / "checkpoints/step_00000004"
        (tag / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"weighs")
    else:
        argv.append(change)
    train_main.main(["--check", *argv])  # returns (not finished) instead of exiting 3


def test_unfinished_run_is_not_hashed_before_launch(finished_run, monkeypatch):
    """Every rank runs this check at launch: an unfinished run's tag (hundreds of GB at 14B) must not be
    hashed here too; the normal start-up verifies it once."""
    from megavg.train import ckpt_integrity

    def hashing(*args, **kwargs):
        raise AssertionError("the latest tag was hashed before launch")

    monkeypatch.setattr(ckpt_integrity, "problems", hashing)
    assert (
        train_main.steps_done(
            train_main.load_config(finished_run[1], [*finished_run[2:], "schedule.steps=8"])
        )
        == 4
    )
