"""``launchers/local.sh``: the one-machine launcher (DeepSpeed's launcher, 2 gloo ranks here)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {"PATH": "/usr/bin:/bin", "MEGAVG_PYTHON": sys.executable, "MEGAVG_NPROC": "2", "OMP_NUM_THREADS": "1"}


@pytest.mark.distributed
def test_local_launcher_turns_sigusr1_into_a_checkpoint_and_exit_75(shards, tmp_path):
    run = tmp_path / "run"
    cmd = ["bash", "launchers/local.sh", "train", "configs/train/dcaev_tiny_test.yaml", f"run.dir={run}",
           f"data.shards={shards}", "schedule.steps=200", "checkpoint.every=0"]  # fmt: skip
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)  # the launcher, not the ranks: it must pass the request on
        assert proc.wait(timeout=120) == 75, (tmp_path / "log").read_text()
    log = (tmp_path / "log").read_text()
    assert "[INFO]" not in log and "Setting ds_accelerator" not in log, log  # launcher: warnings only
    stopped = re.search(r"checkpoint at step (\d+) written, exiting 75", log)
    assert stopped and (run / "checkpoints" / "latest").read_text().strip() == f"step_{int(stopped[1]):08d}"


@pytest.mark.distributed
def test_local_launcher_fails_fast_on_a_bad_config_key(tmp_path):
    cmd = ["bash", "launchers/local.sh", "train", "configs/train/dcaev_tiny_test.yaml", "schedule.stepz=3"]
    # a rank that missed the error would wait out the rendezvous or a collective (15-30 min): the timeout
    # catches that and is generous for a loaded machine; no wall-clock assertion
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = {line.split(" (known:")[0] for line in proc.stderr.splitlines() if line.startswith("error: ")}
    assert errors == {"error: config schedule.stepz: unknown key"}  # the same line from each rank


def test_local_launcher_refuses_an_unknown_job():
    proc = subprocess.run(
        ["bash", "launchers/local.sh", "trian", "x.yaml"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown job 'trian' (expected train, precompute or export)"
