"""``tools/gpu_check.sh`` on a machine without CUDA: one line, exit 0, nothing installed or run."""

import os
import subprocess

from tests.distributed.launch import REPO

NO_CUDA = "gpu_check: no CUDA device visible to torch on this machine: nothing run"


def test_without_cuda_one_line_and_nothing_run(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", "tools/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [NO_CUDA] and not proc.stderr
    assert not any(tmp_path.iterdir())  # no work folder: no inputs prepared, no check started
