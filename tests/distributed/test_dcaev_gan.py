"""The DC-AE-V adversarial phase on real clips, 2-process ZeRO-3 through the ``deepspeed`` launcher.

Run A: 3 steps of reconstruction + perceptual (random VGG) + GAN from step 2 (start_step 1), evaluation
on held-back clips at step 2, checkpoints at 2 and 3. It must finish without NaN and its loss terms,
eval metrics and reconstruction image must be in tensorboard. Run B starts from a copy of A's step-2
checkpoint and takes step 3: its loss and its generator *and discriminator* weights (the discriminator's
own ZeRO-3 checkpoint, consolidated by DeepSpeed's tool) must equal A's.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.data.conftest import video_sample, write_video_set
from tests.distributed.engine_reference import consolidated, rel_errs
from tests.distributed.test_engine_resume import launch

NAMES = ["carphone_pristine", "carphone_distorted"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[str, str]:
    """(training shards: 4 real clips, held-back shards: 2 real clips), one clip per shard."""
    root = tmp_path_factory.mktemp("gan_clips")
    train = write_video_set(root / "train", [video_sample(f"t{i}", NAMES[i % 2]) for i in range(4)])
    held = write_video_set(root / "eval", [video_sample(f"e{i}", NAMES[i % 2]) for i in range(2)])
    return train, held


def args(run: Path, clips: tuple[str, str]) -> list[str]:
    return [
        "--config", "configs/train/dcaev_tiny_test.yaml", f"data.shards={clips[0]}", f"run.dir={run}",
        "schedule.steps=3", "checkpoint.every=2", "task.args.perceptual.weight=1.0",
        "task.args.perceptual.vgg=random", "task.args.perceptual.frames=2", "task.args.gan.weight=0.5",
        "task.args.gan.start_step=1", "task.args.gan.discriminator.channels=8", "task.args.gan.lr=1.0e-3",
        f"task.args.eval.shards={clips[1]}", "task.args.eval.every=2", "task.args.eval.clips=2",
    ]  # fmt: skip


def records(run: Path) -> dict[int, dict]:
    """metrics.jsonl merged per step (training and eval lines)."""
    out: dict[int, dict] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(rec)
    return out


def discriminator(run: Path, step: int) -> dict:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(
        str(run / "checkpoints" / f"step_{step:08d}"), tag="discriminator"
    )


@pytest.mark.distributed
def test_gan_phase_trains_logs_and_resumes_the_discriminator(tmp_path, clips):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_a, run_b = tmp_path / "a", tmp_path / "b"
    proc = launch(["--module", "megavg.train"], args(run_a, clips), tmp_path / "a_out")
    assert proc.wait(timeout=300) == 0, (tmp_path / "a_out.log").read_text()

    recs = records(run_a)
    assert sorted(recs) == [1, 2, 3]
    assert all(math.isfinite(v) for rec in recs.values() for v in rec.values())
    assert "train/d_loss" not in recs[1] and {"train/d_loss", "train/g_adv"} <= set(recs[3])
    events = EventAccumulator(str(run_a / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    for name in ("l1", "mse", "perceptual", "g_adv", "gan_weight", "d_loss", "logits_real", "logits_fake"):
        assert f"train/{name}" in scalars, sorted(scalars)
    assert {"eval/psnr", "eval/ssim"} <= scalars and "eval/reconstruction" in events.Tags()["images"]
    assert [e.step for e in events.Scalars("train/d_loss")] == [2, 3]
    assert 0 < events.Scalars("eval/ssim")[0].value < 1 and events.Scalars("eval/psnr")[0].value > 5

    (run_b / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_a / "checkpoints" / "step_00000002", run_b / "checkpoints" / "step_00000002")
    (run_b / "checkpoints" / "latest").write_text("step_00000002\n")
    proc = launch(["--module", "megavg.train"], args(run_b, clips), tmp_path / "b_out")
    assert proc.wait(timeout=300) == 0, (tmp_path / "b_out.log").read_text()

    assert records(run_b)[3]["train/d_loss"] == pytest.approx(recs[3]["train/d_loss"], rel=1e-6)
    assert records(run_b)[3]["train/loss"] == pytest.approx(recs[3]["train/loss"], rel=1e-6)
    total, worst = rel_errs(discriminator(run_b, 3), discriminator(run_a, 3))
    assert worst <= 1e-6, (total, worst)
    assert rel_errs(discriminator(run_a, 3), discriminator(run_a, 2))[0] > 1e-4  # it did train
    total, worst = rel_errs(consolidated(run_b), consolidated(run_a))
    assert worst <= 1e-6, (total, worst)
