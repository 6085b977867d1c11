"""What the launchers hand each rank, without a cluster: ``srun``/``scontrol`` are stubs that record.

The batch script must pass ``--cpus-per-task`` on to ``srun`` (SLURM 22.05+ does not) and derive
``OMP_NUM_THREADS`` from it; ``rank.sh`` plus :mod:`megavg.utils.device` must put a task that SLURM
bound one GPU (``CUDA_VISIBLE_DEVICES`` = its GPU) on device 0, and local rank r on GPU r otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megavg.utils.device import CudaTable, local_cuda_index

REPO = Path(__file__).resolve().parents[2]
SRUN = """#!/usr/bin/env bash
{ printf '%s\\n' "$@"; echo "OMP_NUM_THREADS=$OMP_NUM_THREADS"; } > "$STUB_OUT/srun"
"""
SCONTROL = """#!/usr/bin/env bash
case "$2" in hostnames) echo node1 ;; job) echo "JobState=RUNNING" ;; esac
"""


def stub_bin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def slurm_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": f"{stub_bin(tmp_path)}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "STUB_OUT": str(tmp_path),
           "MEGAVG_PYTHON": sys.executable, "MEGAVG_HOME": str(REPO), "SLURM_JOB_ID": "7",
           "SLURM_JOB_NAME": "megavg", "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_NTASKS": "8", "SLURM_TASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8",
           "SLURM_SUBMIT_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}  # fmt: skip
    return env | extra


@pytest.mark.parametrize(
    ("cpus", "srun_cpus", "threads"), [("12", ["--cpus-per-task=12"], "12"), (None, [], "1")]
)
def test_sbatch_passes_cpus_per_task_to_srun_and_sets_omp(tmp_path, cpus, srun_cpus, threads):
    env = slurm_env(tmp_path, **({"SLURM_CPUS_PER_TASK": cpus} if cpus else {}))
    shards = tmp_path / "shards"  # the pre-flight counts shards for the 8 ranks; srun is a stub, none is read
    shards.mkdir()
    for i in range(8):
        (shards / f"{i:06d}.tar").touch()
    cmd = [
        "bash",
        "launchers/megavg.sbatch",
        "train",
        "configs/train/dcaev_tiny_test.yaml",
        f"data.shards={shards}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = (tmp_path / "srun").read_text().splitlines()
    step_options = lines[: lines.index(f"{REPO}/launchers/rank.sh")]
    assert [opt for opt in step_options if opt.startswith("--cpus-per-task")] == srun_cpus
    assert lines[-1] == f"OMP_NUM_THREADS={threads}"  # inherited 1 loses to SLURM's 12


@pytest.mark.parametrize(("visible", "expected"), [(None, "3"), ("3", "0"), ("0,1,2,3,4,5,6,7", "3")])
def test_rank_sh_task_lands_on_its_gpu(tmp_path, visible, expected):
    """Task 3 of 8 on a fake node of 8 GPUs: its own bound GPU is device 0, else GPU 3."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "SLURM_PROCID": "3", "SLURM_LOCALID": "3",
           "SLURM_NTASKS": "8", "SLURM_STEP_TASKS_PER_NODE": "8", "SLURM_JOB_ID": "7",
           "MASTER_ADDR": "node1", "MASTER_PORT": "1"}  # fmt: skip
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    proc = subprocess.run(["bash", "launchers/rank.sh", "env"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rank_env = dict(line.split("=", 1) for line in proc.stdout.splitlines()[1:] if "=" in line)
    assert str(local_cuda_index(rank_env, CudaTable(physical=8))) == expected
    assert f"CUDA_VISIBLE_DEVICES={visible or 'unset'}" in proc.stdout


@pytest.mark.parametrize(("visible", "count"), [("2,3", "2"), ("5", "1"), ("", "0")])
def test_local_launcher_counts_the_visible_gpus(visible, count):
    env = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": visible}
    proc = subprocess.run(["bash", "-c", "source launchers/lib.sh && megavg_visible_gpus"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.stdout.strip() == count, proc.stderr
