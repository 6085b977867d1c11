"""``tools/gpu_check.sh``: without CUDA one line and nothing run; a table entry is "pass" only for what
ran; the CPU rehearsal (2 gloo ranks, the stand-ins) runs every check of the table and passes."""

import json
import os
import subprocess
import sys

import pytest

from tests.distributed.launch import REPO

sys.path.insert(0, str(REPO / "tools"))
from gpu_check import pytest_result  # noqa: E402

NO_CUDA = "gpu_check: no CUDA device visible to torch on this machine: nothing run"


def test_without_cuda_one_line_and_nothing_run(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", "tools/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [NO_CUDA] and not proc.stderr
    assert not any(tmp_path.iterdir())  # no work folder: no inputs prepared, no check started


SKIP_LINE = "SKIPPED [2] tests/models/test_wan_gpu.py:20: needs transformer_engine"


@pytest.mark.parametrize(
    ("rc", "text", "expected"),
    [
        (0, "3 passed in 1.0s", 0),
        (0, f"{SKIP_LINE}\n3 skipped in 1.0s", "skipped: 3 gpu tests, none ran (needs transformer_engine)"),
        (
            0,
            f"{SKIP_LINE}\n1 passed, 2 skipped in 1.0s",
            "partial: 1 passed, 2 skipped (needs transformer_engine)",
        ),
        (5, "no tests ran in 0.1s", "skipped: 0 gpu tests, none ran"),
        (1, "1 failed, 2 passed in 1.0s", 1),
    ],
)
def test_skipped_gpu_tests_never_read_pass(rc, text, expected):
    assert pytest_result(rc, text) == expected


@pytest.mark.slow
@pytest.mark.distributed
def test_cpu_rehearsal_on_two_ranks_passes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--cpu-rehearsal", "2", "--work", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CPU rehearsal: 2 gloo ranks" in proc.stdout
    rows = {row["check"]: row["result"] for row in json.loads((tmp_path / "results.json").read_text())}
    assert rows.pop("gpu-marked tests").startswith("skipped: --cpu-rehearsal")
    assert len(rows) == 12 and set(rows.values()) == {"pass"}, rows
