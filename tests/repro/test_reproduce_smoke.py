"""``bash tools/reproduce.sh --smoke``: every stage of the reproduction at toy size (mechanics only).

Runs the real chain (deepspeed launches on 2 CPU processes, consolidation, precompute, export, generate,
FVD with a random I3D at a small size), then checks the report's structure and that a rerun skips every
finished stage.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARMS = {"base", "adapt", "noalign", "scratch_same_budget", "scratch_cap"}


def reproduce(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parent.parent), "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    cmd = ["bash", str(ROOT / "tools" / "reproduce.sh"), "--smoke", "--out", str(out)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow  # ~10 DeepSpeed start-ups: about 10 minutes on 2 cores, over the default suite's budget
@pytest.mark.distributed
def test_smoke_run_writes_the_report_and_resumes(tmp_path):
    out = tmp_path / "repro"
    first = reproduce(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    data = json.loads((out / "report" / "benchmarks" / "results" / "reproduction.json").read_text())
    assert set(data["arms"]) == ARMS
    for arm in data["arms"].values():
        assert {"fvd", "prompt_accuracy", "train_flops", "latency_s", "fvd_per_seed"} <= set(arm)
        assert arm["train_flops"] > 0 and arm["latency_s"] > 0 and 0.0 <= arm["prompt_accuracy"] <= 1.0
    flops = {name: arm["train_flops"] for name, arm in data["arms"].items()}
    assert flops["scratch_same_budget"] <= flops["scratch_cap"]
    assert set(data["curves"]) == {"base", "adapt", "noalign", "scratch"}
    assert all(rows for rows in data["curves"].values())
    page = (out / "report" / "docs" / "reproduction.md").read_text()
    assert "AE-Adapt-V without phase 1" in page
    for image in ("reproduction_curves.png", "reproduction_samples.png"):
        assert (out / "report" / "docs" / "images" / image).read_bytes()[:4] == b"\x89PNG"
    again = reproduce(out)  # every stage done: all skipped, nothing relaunched
    assert again.returncode == 0, again.stderr[-3000:]
    assert "deepspeed" not in again.stderr and again.stderr.count("done already") == len(data["stages"])
