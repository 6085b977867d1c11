"""``launchers/megavg.sbatch`` on a real (local, one-node) SLURM cluster running the real trainer.

Two gloo ranks train the tiny DC-AE-V config on shards made from real clips. The reference is an
uninterrupted run; the preempted run gets SIGUSR1 mid-training (what ``#SBATCH --signal=USR1@T`` sends),
must requeue itself, resume from its checkpoint and end with the same weights as the reference.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

import megavg.models
from tests.slurm.cluster import FINAL_STATES, LocalSlurm, unavailable_reason
from tests.slurm.jobs import (
    CONFIG,
    STEPS,
    assert_finished,
    assert_stopped_and_resumed,
    consolidated,
    job_log,
    rank_log,
    sbatch,
    submit,
    train_args,
    wait_for_first_step,
    wait_for_text,
)

pytestmark = [pytest.mark.slurm, pytest.mark.distributed]


@pytest.fixture(scope="module")
def slurm():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with LocalSlurm() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def reference(slurm, shards, tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run: its folder (the job's logs are under it too)."""
    work = tmp_path_factory.mktemp("reference")
    job_id = submit(slurm, work, CONFIG, *train_args(shards))
    job = slurm.wait(job_id, timeout=240)
    (work / "job_id").write_text(job_id)
    assert_finished(job)
    return work


def test_two_ranks_train_to_a_checkpoint_and_name_every_rank(reference):
    job_id = (reference / "job_id").read_text()
    assert (reference / "run" / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS:08d}"
    for rank in (0, 1):
        assert f"rank {rank} of 2 (local rank {rank} of 2)" in rank_log(reference, job_id, 0, rank)
    log = job_log(reference, job_id)
    assert "ntasks=2, backend gloo" in log and "finished" in log


def test_export_job_writes_a_model_folder_from_the_run(slurm, reference):
    out = reference / "model"
    job_id = sbatch(slurm, reference, "export", str(reference / "run"), "--out", str(out))
    assert_finished(slurm.wait(job_id, timeout=120))
    assert "ntasks=1" in job_log(reference, job_id)
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))


def test_precompute_job_writes_one_latent_part_per_rank(slurm, shards, tmp_path):
    from tests.infer.tiny_encoders import tiny_text_encoder

    megavg.models.build("dc-ae-v-tiny").save(tmp_path / "vae")
    tiny_text_encoder(tmp_path / "text")
    args = ["--vae", str(tmp_path / "vae"), "--text-encoder", str(tmp_path / "text"), "--shards", str(shards),
            "--frames", "8", "--size", "32", "32", "--out", str(tmp_path / "latents")]  # fmt: skip
    job_id = sbatch(slurm, tmp_path, "precompute", *args)
    assert_finished(slurm.wait(job_id, timeout=180))
    parts = sorted(p.name for p in (tmp_path / "latents").iterdir())
    assert parts == ["part-00000", "part-00001"]
    assert all(list((tmp_path / "latents" / p).glob("*.tar")) for p in parts)


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_weights(slurm, shards, reference, tmp_path):
    job_id = submit(slurm, tmp_path, CONFIG, *train_args(shards))
    wait_for_first_step(slurm, job_id, tmp_path / "run" / "metrics.jsonl")
    slurm.run("scancel", "--signal=USR1", job_id)  # the job steps, as --signal=USR1@T does
    job = slurm.wait(job_id, timeout=240, until=lambda j: j.restarts >= 1 and j.state in FINAL_STATES)
    assert_finished(job)

    assert_stopped_and_resumed(tmp_path, job_id)
    assert f"job {job_id} restart 1: rank 0 of 2" in rank_log(tmp_path, job_id, 1, 0)
    log = job_log(tmp_path, job_id)
    assert "requeueing (this is restart 0)" in log and "(train, restart 1)" in log

    expected, actual = consolidated(reference / "run"), consolidated(tmp_path / "run")
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=0, msg=name)


def test_batch_shell_signal_is_forwarded_and_scancel_is_not_requeued(slurm, shards, tmp_path):
    job_id = submit(slurm, tmp_path, CONFIG, *train_args(shards), "schedule.steps=200")
    ranks = tmp_path / "logs" / f"megavg-test-{job_id}"
    wait_for_text(ranks / "restart0" / "rank0.log", "megavg.train.metrics: step")
    slurm.run("scancel", "--batch", "--signal=USR1", job_id)  # only the batch shell: it must pass it on
    wait_for_text(ranks / "restart1" / "rank0.log", "megavg.train.metrics: step")
    assert "batch shell got a stop signal" in job_log(tmp_path, job_id)
    slurm.run("scancel", job_id)  # SIGTERM to everything: the ranks still checkpoint, nothing requeues
    slurm.wait(job_id, timeout=60)  # CANCELLED once the batch shell is gone: a requeue would show by now
    time.sleep(1)
    job = slurm.job(job_id)
    assert (job.state, job.restarts) == ("CANCELLED", 1), job.fields
    stopped = re.search(
        r"checkpoint at step (\d+) written, exiting 75", (ranks / "restart1" / "rank0.log").read_text()
    )
    assert stopped, "the ranks did not checkpoint on scancel's SIGTERM"
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{int(stopped.group(1)):08d}"


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        ("configs/train/no_such.yaml", "run.dir=x", "configs/train/no_such.yaml: config file not found"),
        (CONFIG, "schedule.stepz=3", "config schedule.stepz: unknown key"),
        (CONFIG, "data.shards=/no/such/shards", "config data.shards: no .tar shard found at /no/such/shards"),
    ],
    ids=["missing-config", "unknown-key", "missing-data"],
)
def test_bad_input_fails_fast_with_one_error_line(slurm, tmp_path, config, override, message):
    job_id = submit(slurm, tmp_path, config, override)
    job = slurm.wait(job_id, timeout=240)  # a hang guard only (a stuck rank waits 15+ min)
    assert (job.state, job.exit_code) == ("FAILED", 2), job.fields
    errors = [line for line in job_log(tmp_path, job_id).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], errors
