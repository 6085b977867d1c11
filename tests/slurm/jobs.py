"""Submitting ``launchers/megavg.sbatch`` to a :class:`~tests.slurm.cluster.LocalSlurm` and reading
what the job left behind (job log, per-rank logs, the run's checkpoints)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import torch

from tests.slurm.cluster import FINAL_STATES, Job, LocalSlurm

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/train/dcaev_tiny_test.yaml"
STEPS = 10  # long enough (a few seconds of steps) for a signal to land mid-training
TWO_RANKS = ("--ntasks-per-node=2",)


def submit(slurm: LocalSlurm, work: Path, config: str, *overrides: str, layout=TWO_RANKS) -> str:
    """``sbatch`` the launcher for a training job (2 ranks on one node unless ``layout`` says otherwise:
    sbatch options) with its logs and run folder under ``work``."""
    return sbatch(slurm, work, "train", config, f"run.dir={work / 'run'}", *overrides, layout=layout)


def sbatch(slurm: LocalSlurm, work: Path, *job: str, layout=TWO_RANKS) -> str:
    """``sbatch`` ``launchers/megavg.sbatch JOB ARGS...`` with the ``layout`` options (2 tasks on one node by
    default), job log and rank logs under ``work``."""
    env = slurm.env(MEGAVG_PYTHON=sys.executable, MEGAVG_LOG_DIR=str(work / "logs"), OMP_NUM_THREADS="1")
    return slurm.sbatch(
        "--job-name=megavg-test", *layout, f"--chdir={REPO}", f"--output={work}/%x-%j.out",
        str(REPO / "launchers" / "megavg.sbatch"), *job, env=env,
    )  # fmt: skip


def train_args(shards: Path) -> list[str]:
    return [f"data.shards={shards}", f"schedule.steps={STEPS}", "checkpoint.every=0"]


def job_log(work: Path, job_id: str) -> str:
    return (work / f"megavg-test-{job_id}.out").read_text()


def rank_log(work: Path, job_id: str, restart: int, rank: int) -> str:
    return (work / "logs" / f"megavg-test-{job_id}" / f"restart{restart}" / f"rank{rank}.log").read_text()


def consolidated(run_dir: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"))


def assert_finished(job: Job) -> None:
    assert (job.state, job.exit_code) == ("COMPLETED", 0), job.fields


def wait_for_first_step(slurm: LocalSlurm, job_id: str, metrics: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert slurm.job(job_id).state not in FINAL_STATES, slurm.job(job_id).fields
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)


def wait_for_text(path: Path, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.2)


def assert_stopped_and_resumed(work: Path, job_id: str) -> int:
    """Restart 0's rank 0 checkpointed on SIGUSR1 mid-run, the job requeued itself and restart 1 resumed from
    that checkpoint; returns the step it stopped at."""
    stopped = re.search(r"checkpoint at step (\d+) written, exiting 75", rank_log(work, job_id, 0, 0))
    assert stopped, "rank 0 of the first run did not stop on SIGUSR1"
    step = int(stopped.group(1))
    assert 1 <= step < STEPS
    resumed = rank_log(work, job_id, 1, 0)
    assert f"resumed from {work / 'run' / 'checkpoints' / f'step_{step:08d}'} (step {step})" in resumed
    assert "requeueing (this is restart 0)" in job_log(work, job_id)
    return step
