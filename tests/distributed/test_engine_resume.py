"""Through the real ``deepspeed`` launcher on real clips: resume after kill -9 and after SIGUSR1 equals an
uninterrupted run; a corrupt sample is skipped with one warning.

Straight run A: 6 steps. Run B: killed (-9, one rank) while waiting for step 4's batch, after the step-3
checkpoint; relaunched, stopped by SIGUSR1 (to one rank) during step 5 -> checkpoint 5 and exit 75;
relaunched again -> step 6. B's losses and final weights must equal A's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.data.conftest import video_sample, write_video_set
from tests.distributed.engine_reference import consolidated, logged_losses, rel_errs
from tests.distributed.launch import free_port

REPO = Path(__file__).resolve().parents[2]
WORKER = "tests/distributed/engine_worker.py"
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))


def launch(target: list[str], args: list[str], out: Path, **env: str) -> subprocess.Popen:
    """``deepspeed --num_gpus 2`` on ``target`` (a script, or ``--module megavg.train``)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MEGAVG_TEST_OUT": str(out), **env}
    full_env["PYTHONPATH"] = f"{REPO}{os.pathsep}{full_env.get('PYTHONPATH', '')}"
    full_env.setdefault("DS_ACCELERATOR", "cpu")  # as tools/demo.sh launches on a CPU machine
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--log_level", "warning"]
    cmd += [*target, *args]
    log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - closed by the OS when the test ends
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"launch ended ({proc.returncode}) before {what}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def has_step(run: Path, step: int) -> bool:
    try:
        return step in logged_losses(run)
    except (OSError, ValueError):  # not written yet, or a line being written
        return False


def latest(run: Path) -> str:
    path = run / "checkpoints" / "latest"
    return path.read_text().strip() if path.is_file() else ""


def assert_quiet_start(console: str) -> None:
    """The demo's launch flags on CPU: none of DeepSpeed's accelerator lines (auto-detection warning, or
    the override's INFO) nor ``CUDA_VISIBLE_DEVICES``; rank 0's own start-up lines come in order, the first
    before DeepSpeed is even imported (so it shows within seconds of the launch)."""
    lines = console.splitlines()
    assert not [x for x in lines if "accelerator" in x or "CUDA_VISIBLE_DEVICES" in x], console
    ours = [x for x in lines if " INFO megavg" in x]
    order = ["config OK", "DeepSpeed imported", "building the model", "DeepSpeed initialize"]
    order += ["starting at step", "first step done", "step 1 | loss"]
    first = [next(i for i, x in enumerate(ours) if phase in x) for phase in order]
    assert first == sorted(first) and first[0] == 0, ours


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """Four real clips and one corrupt sample, one sample per shard (5 shards over 2 ranks)."""
    names = ["carphone_pristine", "carphone_distorted"] * 2
    samples = [video_sample(f"s{i}", name) for i, name in enumerate(names)]
    samples.append(
        video_sample("bad", "carphone_pristine", data=b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 3000)
    )
    return write_video_set(tmp_path_factory.mktemp("clips") / "shards", samples)


@pytest.mark.distributed
def test_kill9_and_sigusr1_resume_equal_straight_run(tmp_path, shards):
    common = ["--config", "configs/train/dcaev_tiny_test.yaml", f"data.shards={shards}", "schedule.steps=6"]
    common += ["checkpoint.every=3"]
    module = ["--module", "megavg.train"]
    run_a, run_b = tmp_path / "a", tmp_path / "b"

    straight = launch(module, [*common, f"run.dir={run_a}"], tmp_path / "a_out")
    assert straight.wait(timeout=300) == 0, (tmp_path / "a_out.log").read_text()
    log_a = (tmp_path / "a_out.log").read_text()
    assert sum("bad" in line and "WARNING" in line for line in log_a.splitlines()) == 1, log_a
    assert_quiet_start(log_a)
    assert logged_losses(run_a).keys() == set(range(1, 7))

    args_b = [*common, f"run.dir={run_b}"]
    out = tmp_path / "b_out"
    killed = launch([WORKER], args_b, out, MEGAVG_TEST_BLOCK_AT="3")  # step 4 waits for its batch
    wait_for(lambda: latest(run_b) == "step_00000003", killed, "checkpoint 3")
    os.kill(int((out / "pid_rank1").read_text()), signal.SIGKILL)
    time.sleep(1)  # the launcher sees rank 1 die and SIGTERMs rank 0, which (waiting for data) can't save
    os.kill(int((out / "pid_rank0").read_text()), signal.SIGKILL)  # as SLURM escalates to SIGKILL
    assert killed.wait(timeout=60) not in (0, 75)
    assert latest(run_b) == "step_00000003"

    (out / "pid_rank1").unlink()
    stopped = launch([WORKER], args_b, out, MEGAVG_TEST_BLOCK_AT="4")  # step 5 waits for "release"
    wait_for(lambda: has_step(run_b, 4) and (out / "pid_rank1").exists(), stopped, "step 4")
    os.kill(int((out / "pid_rank1").read_text()), signal.SIGUSR1)
    (out / "release").touch()
    assert stopped.wait(timeout=120) == 75, (tmp_path / "b_out.log").read_text()
    assert latest(run_b) == "step_00000005"

    resumed = launch(module, args_b, tmp_path / "b2_out")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "b2_out.log").read_text()
    assert logged_losses(run_b) == pytest.approx(logged_losses(run_a), rel=1e-6)
    total, worst = rel_errs(consolidated(run_b), consolidated(run_a))
    assert worst <= 1e-6, (total, worst)
    checkpoints = sorted(p.name for p in (run_b / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_00000005", "step_00000006"]  # keep=2: older ones pruned
    assert (run_b / "config.yaml").is_file() and any((run_b / "tensorboard").iterdir())
