"""``launchers/local.sh``: the one-machine launcher (DeepSpeed's launcher, 2 gloo ranks here)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.distributed
def test_local_launcher_fails_fast_on_a_bad_config_key(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "MEGAVG_PYTHON": sys.executable,
        "MEGAVG_NPROC": "2",
        "OMP_NUM_THREADS": "1",
    }
    cmd = ["bash", "launchers/local.sh", "train", "configs/train/dcaev_tiny_test.yaml", "schedule.stepz=3"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert time.monotonic() - start < 60
    errors = {line.split(" (known:")[0] for line in proc.stderr.splitlines() if line.startswith("error: ")}
    assert errors == {"error: config schedule.stepz: unknown key"}  # the same line from each rank


def test_local_launcher_refuses_an_unknown_job():
    proc = subprocess.run(
        ["bash", "launchers/local.sh", "trian", "x.yaml"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown job 'trian' (expected train, precompute or export)"
