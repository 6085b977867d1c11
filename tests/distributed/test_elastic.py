"""Elastic resume (a ZeRO-3 checkpoint of N ranks resumed on M != N) and the streaming export reader.

Tiny DC-AE-V, fp32 ZeRO-3, synthetic data whose global batch (4 samples) is the same whatever the
data-parallel split (``engine_worker.synthetic_batch``), no noise in the loss: a resumed run can then be
compared with a straight one. LR warmup over 5 steps, so a reset schedule or Adam step count shows.
Part of the decoder is frozen and left out of the checkpoints, except in run C's, which holds it.
Parameters under 1000 elements are persistent (ZeRO-3 keeps them gathered, as the bf16 config does).
3 latent channels: a 3-element bias, zero-padded in its ZeRO-3 partitions on 2 and 4 ranks (every other
tensor of the tiny preset divides by 4).

- A: 2 ranks x batch 2, 4 steps straight (checkpoints 1..4).
- C: A's step-2 checkpoint resumed on 4 ranks x batch 1, steps 3 (2 -> 4).
- B: C's step-3 checkpoint resumed on 2 ranks x batch 2, step 4 (4 -> 2).
Their losses, learning rates and weights equal A's at the same step. The export reader equals DeepSpeed's
own ``zero_to_fp32`` on 2-rank (frozen excluded) and 4-rank (frozen included) tags.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megavg.train.zero_checkpoint import PARAM, ZeroCheckpoint
from tests.distributed.engine_reference import logged_losses, rel_errs
from tests.distributed.launch import torchrun

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests/distributed/engine_worker.py"
TINY = "configs/train/dcaev_tiny_test.yaml"
PERSIST = "parallel.deepspeed_overrides={zero_optimization: {stage3_param_persistence_threshold: 1000}}"
COMMON = ["schedule.warmup_steps=5", "checkpoint.every=1", "checkpoint.keep=4", "logging.tensorboard=false",
          "model.trainable=[encoder.*, decoder.stages.*]", "model.args.latent_channels=3",
          PERSIST]  # fmt: skip


def lrs(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {rec["step"]: rec["train/lr"] for rec in map(json.loads, lines)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("elastic")
    (tmp / "unused.tar").touch()  # data.shards must exist; the synthetic loader ignores it
    base = [*COMMON, f"data.shards={tmp / 'unused.tar'}"]
    a, bc = tmp / "a", tmp / "bc"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEGAVG_TEST_SYNTHETIC", "1")
        torchrun(
            WORKER,
            2,
            tmp / "out",
            "--config",
            TINY,
            *base,
            f"run.dir={a}",
            "data.batch_size=2",
            "schedule.steps=4",
        )
        shutil.copytree(a / "checkpoints" / "step_00000002", bc / "checkpoints" / "step_00000002")
        (bc / "checkpoints" / "latest").write_text("step_00000002\n")
        c = [*base, f"run.dir={bc}", "checkpoint.exclude_frozen=false", "schedule.steps=3"]
        torchrun(WORKER, 4, tmp / "out", "--config", TINY, *c, "data.batch_size=1")
        shutil.copytree(bc / "checkpoints" / "step_00000003", tmp / "c" / "step_00000003")
        torchrun(
            WORKER,
            2,
            tmp / "out",
            "--config",
            TINY,
            *base,
            f"run.dir={bc}",
            "data.batch_size=2",
            "schedule.steps=4",
        )
    return {"a": a, "bc": bc, "c": tmp / "c"}


def weights(folder: Path, tag: str) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag, exclude_frozen_parameters=True)


@pytest.mark.distributed
@pytest.mark.parametrize(("step", "world"), [(3, 4), (4, 2)])
def test_resume_on_other_world_size_continues_the_straight_run(runs, step, world):
    """Step 3 ran on 4 ranks from a 2-rank checkpoint, step 4 on 2 ranks from a 4-rank one."""
    straight, resumed = runs["a"], runs["bc"]
    assert logged_losses(resumed)[step] == pytest.approx(logged_losses(straight)[step], rel=1e-5)
    # LambdaLR: base lr x lr_lambda(step) in Python floats, whatever the world size: the same arithmetic
    assert lrs(resumed)[step] == lrs(straight)[step]
    assert lrs(straight)[step] != pytest.approx(lrs(straight)[step - 1])  # a reset schedule would show
    tag = f"step_{step:08d}"
    ours = runs["c"] if step == 3 else resumed / "checkpoints"
    assert ZeroCheckpoint(ours / tag).world_size == world
    total, worst = rel_errs(weights(ours, tag), weights(straight / "checkpoints", tag))
    assert total <= 1e-5 and worst <= 1e-4, (total, worst)


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["a", "c"])
def test_reader_equals_deepspeed_zero_to_fp32(runs, name):
    """Per-tensor reads equal DeepSpeed's own consolidation (2 ranks, frozen excluded; 4 ranks, frozen
    fragments included), and the Adam moments of every tensor cover the right elements."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder, tag = (
        (runs["a"] / "checkpoints", "step_00000004") if name == "a" else (runs["c"], "step_00000003")
    )
    reference = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag)
    ckpt = ZeroCheckpoint(folder / tag)
    state = ckpt.state_dict()
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert torch.equal(state[key].contiguous(), value), key
    assert bool(ckpt.frozen_shapes) == (name == "c")
    assert ckpt.flat_keys() == [PARAM, "exp_avg", "exp_avg_sq"]
    name0 = next(iter(ckpt.param_shapes))
    sq = ckpt.read(name0, "exp_avg_sq")
    assert sq.shape == ckpt.param_shapes[name0] and bool((sq > 0).all())  # padding would read as 0
    assert torch.equal(ckpt.read_range(name0, 3, 9), reference[name0].reshape(-1)[3:9])


@pytest.mark.distributed
def test_reader_finds_the_bf16_prefixed_optimizer_files(runs, tmp_path):
    """DeepSpeed names a bf16 run's optimizer files ``bf16_zero_pp_rank_R_...`` (model files keep the plain
    name): the reader must find them (consolidate and elastic resume failed on every bf16 run before)."""
    tag = shutil.copytree(runs["a"] / "checkpoints" / "step_00000004", tmp_path / "step_00000004")
    for path in tag.glob("zero_pp_rank_*_optim_states.pt"):
        path.rename(path.with_name("bf16_" + path.name))
    expected = ZeroCheckpoint(runs["a"] / "checkpoints" / "step_00000004").state_dict()
    ckpt = ZeroCheckpoint(tag)
    assert ckpt.world_size == 2
    actual = ckpt.state_dict()
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(actual[name].contiguous(), value.contiguous()), name


def _train_cli(run: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "megavg.train", "--config", TINY, *COMMON, f"run.dir={run}", *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.distributed
def test_checkpoint_of_another_preset_is_one_error_line(runs, tmp_path):
    run = tmp_path / "other"
    shutil.copytree(runs["a"] / "checkpoints", run / "checkpoints")
    proc = _train_cli(run, f"data.shards={runs['a'].parent / 'unused.tar'}", "model.preset=dc-ae-v-small")
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpoint of another model" in errors[0], proc.stderr[-3000:]


@pytest.mark.distributed
def test_sp_degree_not_dividing_the_new_world_is_one_error_line(runs, tmp_path):
    run = tmp_path / "sp"
    shutil.copytree(runs["a"] / "checkpoints", run / "checkpoints")
    proc = _train_cli(run, f"data.shards={runs['a'].parent / 'unused.tar'}", "parallel.sp_size=2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: parallel.sp_size=2 does not divide the world size 1"], proc.stderr[-3000:]


def padded_and_next(ckpt: ZeroCheckpoint) -> list[str]:
    """Trainable tensors whose ZeRO-3 partitions pad (numel not a multiple of the world size), each with the
    tensor that follows it in the same flat group (its offset depends on the padding)."""
    names = list(ckpt.param_shapes)
    picked = []
    for name, after in zip(names, names[1:]):
        place, world = ckpt.placements[name], ckpt.world_size
        if place.numel % world and ckpt.placements[after].group == place.group:
            picked += [name, after]
    return picked


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["a", "c"])
def test_reader_padded_tensor_and_the_next_equal_deepspeed(runs, name):
    """The padding arithmetic value by value: the padded tensor and the one after it, weights against
    DeepSpeed's zero_to_fp32, and their Adam moments per tensor against the other world size's run
    (2 vs 4 ranks: different padding, same values) at the same step."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder, tag = (
        (runs["a"] / "checkpoints", "step_00000003") if name == "a" else (runs["c"], "step_00000003")
    )
    ckpt = ZeroCheckpoint(folder / tag)
    picked = padded_and_next(ckpt)
    assert picked, "no padded tensor followed by another one: the test would not exercise the padding"
    reference = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag)
    other = ZeroCheckpoint((runs["c"] if name == "a" else runs["a"] / "checkpoints") / tag)
    for tensor in picked:
        assert torch.equal(ckpt.read(tensor), reference[tensor]), tensor
    for key in ("exp_avg", "exp_avg_sq"):
        ours = {t: ckpt.read(t, key) for t in picked}
        _, worst = rel_errs(ours, {t: other.read(t, key) for t in picked})
        assert worst <= 1e-4, (key, worst)
        assert key == "exp_avg" or all(bool((v > 0).all()) for v in ours.values())  # padding reads as 0


@pytest.mark.distributed
@pytest.mark.parametrize(("step", "world"), [(3, 4), (4, 2)])
def test_resumed_adam_moments_and_step_equal_the_straight_run(runs, step, world):
    """After a resume on another world size, every tensor's exp_avg, exp_avg_sq and Adam step equal the
    straight run's at the same step (a mix-up of the moments, or a reset step count, shows here)."""
    tag = f"step_{step:08d}"
    resumed = ZeroCheckpoint((runs["c"] if step == 3 else runs["bc"] / "checkpoints") / tag)
    straight = ZeroCheckpoint(runs["a"] / "checkpoints" / tag)
    assert resumed.world_size == world and straight.world_size == 2
    assert int(resumed.scalar_state()["step"]) == int(straight.scalar_state()["step"]) == step
    for key in ("exp_avg", "exp_avg_sq"):
        ours = {t: resumed.read(t, key) for t in straight.param_shapes}
        _, worst = rel_errs(ours, {t: straight.read(t, key) for t in straight.param_shapes})
        assert worst <= 1e-4, f"{key}: worst relative error of a tensor {worst:.2e}"
