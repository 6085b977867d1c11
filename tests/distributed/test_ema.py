"""EMA of the trainable weights (``model.ema``) on 2 ranks, fp32 ZeRO-3, tiny DC-AE-V, synthetic data.

- A: decay 0.9, start_step 1, every 2, 5 steps with a checkpoint after each: the exported EMA equals an EMA
  computed in plain torch from the initial weights and the raw weights of every step (read by DeepSpeed's
  own ``zero_to_fp32``); ``--raw`` exports the raw weights.
- R: A's step-2 checkpoint resumed to step 5: the same EMA as A's.
- E: A's step-2 checkpoint resumed on 1 rank (elastic): the EMA is carried over and continues.
- decay 1 (2 steps): the exported weights are the initial ones; decay 0: the raw ones.
- A's intermediate checkpoints export by ``--step``/``--tag``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from megavg.models import registry
from megavg.train.config import load_config
from megavg.train.consolidate import consolidate
from megavg.train.consolidate import main as consolidate_main
from megavg.utils.errors import run_cli
from tests.distributed.engine_reference import initial_model
from tests.distributed.launch import torchrun

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests/distributed/engine_worker.py"
TINY = "configs/train/dcaev_tiny_test.yaml"
EMA_A = "model.ema={decay: 0.9, start_step: 1, every: 2}"
pytestmark = pytest.mark.distributed


def raw_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), f"step_{step:08d}")


def exported(run: Path, out: Path, raw: bool = False) -> dict[str, torch.Tensor]:
    return registry.load_state_dict(consolidate(run, out, raw=raw))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ema")
    (tmp / "unused.tar").touch()  # data.shards must exist; the synthetic loader ignores it
    base = ["--config", TINY, f"data.shards={tmp / 'unused.tar'}", "logging.tensorboard=false"]
    a = tmp / "a"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEGAVG_TEST_SYNTHETIC", "1")
        common_a = [*base, EMA_A, "schedule.steps=5", "checkpoint.every=1", "checkpoint.keep=5"]
        torchrun(WORKER, 2, tmp / "out", *common_a, f"run.dir={a}")
        shutil.copytree(a / "checkpoints" / "step_00000002", tmp / "r" / "checkpoints" / "step_00000002")
        (tmp / "r" / "checkpoints" / "latest").write_text("step_00000002\n")
        torchrun(WORKER, 2, tmp / "out", *common_a, f"run.dir={tmp / 'r'}")
        shutil.copytree(
            tmp / "r" / "checkpoints" / "step_00000002", tmp / "e" / "checkpoints" / "step_00000002"
        )
        (tmp / "e" / "checkpoints" / "latest").write_text("step_00000002\n")
        torchrun(WORKER, 1, tmp / "out", *common_a, f"run.dir={tmp / 'e'}", "data.batch_size=2")
        for decay in ("0", "1"):
            run = tmp / f"decay{decay}"
            torchrun(WORKER, 2, tmp / "out", *base, f"model.ema.decay={decay}", "schedule.steps=2",
                     f"run.dir={run}")  # fmt: skip
    names = ("r", "e", "decay0", "decay1")
    return {"a": a, "tmp": tmp} | {name: tmp / name for name in names}


def test_ema_equals_plain_torch_ema_of_the_same_run(runs):
    a = runs["a"]
    cfg = load_config(a / "config.yaml")
    ema = {k: v.detach().clone() for k, v in initial_model(cfg).named_parameters()}
    for step in range(1, 6):  # start_step 1, every 2: copy at 1, average at 3 and 5
        raw = raw_weights(a, step)
        for name in ema:
            if step <= 1:
                ema[name] = raw[name].clone()
            elif (step - 1) % 2 == 0:
                ema[name] = 0.9 * ema[name] + 0.1 * raw[name]
    got = exported(a, runs["tmp"] / "a_model")
    for name, value in ema.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7, msg=name)
    probe = "encoder.project_in.conv.weight"
    assert not torch.equal(got[probe], raw[probe]) and not torch.equal(got[probe], raw_weights(a, 1)[probe])
    raw_export = exported(a, runs["tmp"] / "a_raw", raw=True)
    for name in ema:
        assert torch.equal(raw_export[name], raw[name]), name
    decays = [json.loads(line)["train/ema_decay"] for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert decays == [0.0, 1.0, 0.9, 1.0, 0.9]


def test_ema_is_sharded_like_the_fp32_partitions(runs):
    """Each rank's checkpoint holds, per optimizer sub-group, an EMA shaped like its fp32 partition: 1/2 of
    the trainable weights (plus padding), no full copy."""
    tag = runs["a"] / "checkpoints" / "step_00000005"
    total = sum(p.numel() for p in initial_model(load_config(runs["a"] / "config.yaml")).parameters())
    for rank in range(2):
        optim = torch.load(tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", weights_only=False)
        state = optim["optimizer_state_dict"]
        held = 0
        for index, flat in enumerate(state["fp32_flat_groups"]):
            ema = state["optimizer_state_dict"]["state"][index]["ema"]
            assert ema.shape == flat.shape and ema.dtype == torch.float32
            held += ema.numel()
        assert total / 2 <= held < total / 2 + 48, (held, total)  # 48 tensors, under 1 padding element each


def test_resume_mid_run_gives_the_same_ema(runs):
    straight = exported(runs["a"], runs["tmp"] / "a_model2")
    resumed = exported(runs["r"], runs["tmp"] / "r_model")
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_resume_on_another_world_size_carries_the_ema(runs):
    """A's 2-rank step-2 checkpoint resumed on 1 rank (re-partitioned, :mod:`megavg.train.elastic`): the
    exported EMA equals plain torch's from A's raw weights of steps 1-2 and the resumed run's of 3-5."""
    from megavg.train.zero_checkpoint import ZeroCheckpoint

    a, e = runs["a"], runs["e"]
    assert ZeroCheckpoint(e / "checkpoints" / "step_00000005").world_size == 1
    ema = {k: v.clone() for k, v in raw_weights(a, 1).items()}  # copy at start_step 1; step 2 skipped
    for step in (3, 5):
        raw = raw_weights(e, step)
        ema = {k: 0.9 * v + 0.1 * raw[k] for k, v in ema.items()}
    got = exported(e, runs["tmp"] / "e_model")
    for name, value in ema.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("decay", ["0", "1"])
def test_decay_one_exports_initial_weights_and_zero_the_raw_ones(runs, decay):
    run = runs[f"decay{decay}"]
    cfg = load_config(run / "config.yaml")
    initial = {k: v.detach() for k, v in initial_model(cfg).named_parameters()}
    expected = initial if decay == "1" else raw_weights(run, 2)
    got = exported(run, runs["tmp"] / f"decay{decay}_model")
    for name in initial:
        assert torch.equal(got[name], expected[name]), name
    moved = raw_weights(run, 2)["encoder.project_in.conv.weight"]
    assert not torch.equal(moved, initial["encoder.project_in.conv.weight"])  # training moved the raw weights


def test_intermediate_checkpoints_export_by_step_or_tag(runs, capsys):
    """``--step 3`` / ``--tag step_00000004`` export those checkpoints (raw: DeepSpeed's own zero_to_fp32
    of the same tag); an absent or crash-incomplete tag is one error line listing the complete ones."""
    a, tmp = runs["a"], runs["tmp"]
    consolidate_main([str(a), "--out", str(tmp / "step3"), "--raw", "--step", "3"])
    consolidate_main([str(a), "--out", str(tmp / "step4"), "--raw", "--tag", "step_00000004"])
    for step in (3, 4):
        got, raw = registry.load_state_dict(tmp / f"step{step}"), raw_weights(a, step)
        assert all(torch.equal(got[name], raw[name]) for name in raw), step
    assert not torch.equal(
        got["encoder.project_in.conv.weight"], raw_weights(a, 3)["encoder.project_in.conv.weight"]
    )
    partial = a / "checkpoints" / "step_00000007"  # newer than latest and unsealed: a crashed save
    partial.mkdir()
    try:
        cases = {"--step": ("9", "step_00000009: not there; complete checkpoints: step_00000001, "),
                 "--tag": ("step_00000007", "step_00000007: incomplete (a crashed save)")}  # fmt: skip
        for flag, (value, expected) in cases.items():
            with pytest.raises(SystemExit):
                run_cli(consolidate_main, [str(a), "--out", str(tmp / "none"), flag, value])
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    finally:
        partial.rmdir()
    assert not (tmp / "none").exists()
