"""A finished run answers at once: ``python -m megavg.train`` on a run whose latest checkpoint reached
``schedule.steps`` says so (and how to train longer) and exits without starting training; ``--check``
tells finished (exit 3) from not finished (exit 0) for tools/demo.sh."""

from __future__ import annotations

import logging
import sys

import pytest

from megavg.train import __main__ as train_main
from tests.conftest import Catcher
from tests.distributed.launch import REPO


@pytest.fixture
def finished_run(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "shard-000000.tar").touch()
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_00000004")
    config = str(REPO / "configs/train/dcaev_tiny_test.yaml")
    return ["--config", config, f"data.shards={shards}", f"run.dir={run}", "schedule.steps=4"]


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
