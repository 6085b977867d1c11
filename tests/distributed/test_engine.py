"""ZeRO-3 on several gloo processes equals plain single-process PyTorch (losses and weights)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import megavg.models
from megavg.train.config import load_config
from megavg.train.consolidate import consolidate
from tests.distributed.engine_reference import (
    consolidated,
    initial_model,
    logged_losses,
    reference_flow_run,
    reference_recon_run,
    rel_errs,
)
from tests.distributed.launch import torchrun

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests/distributed/engine_worker.py"
TINY = "configs/train/dcaev_tiny_test.yaml"
WAN = "configs/train/wan_flow_tiny.yaml"


def warmup_cosine(warmup: int, total: int, floor: float):
    """The LR multiplier after ``n`` optimizer steps, written out here (not megavg's ``lr_lambda``): linear
    warmup over ``warmup`` steps, then half a cosine from 1 down to ``floor`` at step ``total``."""

    def factor(n: int) -> float:
        if n < warmup:
            return (n + 1) / warmup
        t = (n - warmup) / (total - warmup)
        return floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2

    return factor


@pytest.mark.distributed
def test_zero3_two_processes_equal_single_process_torch(tmp_path, monkeypatch):
    """Global batch 4 = 2 ranks x 1 x 2 accumulation steps; 5 AdamW steps with active clipping and a
    warmup + cosine schedule; fp32 ZeRO-3 vs torch AdamW + ``LambdaLR``: losses, pre-clipping gradient
    norms, learning rates and weights. Weights start from a model folder (``model.init``) loaded into a
    model built under zero.Init."""
    monkeypatch.setenv("MEGAVG_TEST_SYNTHETIC", "1")
    run = tmp_path / "run"
    (tmp_path / "unused.tar").touch()  # data.shards must exist; the synthetic loader ignores it
    torch.manual_seed(123)
    megavg.models.save(megavg.models.build("dc-ae-v-tiny"), tmp_path / "init")
    overrides = [f"run.dir={run}", f"data.shards={tmp_path / 'unused.tar'}", "optimizer.grad_clip=0.5"]
    overrides += [f"model.init={tmp_path / 'init'}", "parallel.zero_init=true", "schedule.grad_accum=2"]
    overrides += ["schedule.steps=5", "schedule.warmup_steps=2", "schedule.decay=cosine"]
    overrides += ["schedule.min_lr_ratio=0.1"]
    cfg = load_config(REPO / TINY, overrides)
    torchrun(WORKER, 2, tmp_path / "out", "--config", TINY, *overrides)

    ref_losses, ref_params, ref = reference_recon_run(cfg, dp_size=2, lr_factor=warmup_cosine(2, 5, 0.1))
    got = logged_losses(run)
    assert sorted(got) == list(range(1, cfg.schedule.steps + 1))
    for step, ref_loss in enumerate(ref_losses, start=1):
        assert got[step] == pytest.approx(ref_loss, rel=1e-5), step
    lrs, norms = logged_losses(run, "train/lr"), logged_losses(run, "train/grad_norm")
    assert [lrs[s] for s in sorted(lrs)] == pytest.approx(ref["lr"], rel=1e-6)
    assert [norms[s] for s in sorted(norms)] == pytest.approx(ref["grad_norm"], rel=1e-4)
    assert ref["lr"][0] > ref["lr"][-1] > 0 and max(ref["lr"]) == cfg.optimizer.lr  # warmed up, decayed
    total, worst = rel_errs(consolidated(run), ref_params)
    assert total <= 1e-5 and worst <= 1e-4, (total, worst)
    start = dict(initial_model(cfg).named_parameters())
    assert rel_errs(start, ref_params)[0] > 1e-3  # training moved the weights
    exported = dict(megavg.models.load(consolidate(run, tmp_path / "model")).named_parameters())
    assert rel_errs(exported, ref_params)[0] <= 1e-5  # tools/consolidate.py -> model folder


@pytest.mark.distributed
def test_dp2_x_sp2_ulysses_equals_single_process_torch(tmp_path, monkeypatch):
    """4 ranks = 2 data-parallel x 2 Ulysses ranks of the tiny Wan DiT, flow matching, global batch 2:
    proves the gradient scaling (SP-sum inside a group, DP average across groups) and shared noise.
    The scale is checked on the gradient norm before clipping (Adam and clipping hide a constant factor
    in the weights): the trainer's ``sp_size * loss`` and Ulysses' SP-sum backward must both be right.
    Blocks run under activation checkpointing (recomputation repeats the all-to-alls under ZeRO-3).
    The text embedder is frozen: left out of the checkpoint, restored by tools/consolidate.py."""
    monkeypatch.setenv("MEGAVG_TEST_SYNTHETIC", "1")
    run = tmp_path / "run"
    (tmp_path / "unused.tar").touch()
    overrides = [f"run.dir={run}", f"data.shards={tmp_path / 'unused.tar'}", "parallel.sp_size=2"]
    overrides += ["model.trainable=[patch_embed.*, time_embed.*, blocks.*, head.*]"]
    overrides += ["model.activation_checkpointing=true"]
    cfg = load_config(REPO / WAN, overrides)
    torchrun(WORKER, 4, tmp_path / "out", "--config", WAN, *overrides)

    ref_losses, ref_params, ref_norms = reference_flow_run(cfg, dp_size=2)
    got = logged_losses(run)
    for step, ref in enumerate(ref_losses, start=1):
        assert got[step] == pytest.approx(ref, rel=1e-5), step
    norms = logged_losses(run, "train/grad_norm")
    assert [norms[s] for s in sorted(norms)] == pytest.approx(ref_norms, rel=1e-4)
    assert min(ref_norms) > cfg.optimizer.grad_clip  # clipping active: the weights alone cannot tell
    trained = consolidated(run)
    assert not any(k.startswith("text_embed.") for k in trained)  # frozen: not in the checkpoint
    total, worst = rel_errs(trained, {k: v for k, v in ref_params.items() if not k.startswith("text_embed.")})
    assert total <= 1e-5 and worst <= 1e-4, (total, worst)
    exported = dict(megavg.models.load(consolidate(run, tmp_path / "model")).named_parameters())
    assert rel_errs(exported, ref_params)[0] <= 1e-5


@pytest.mark.distributed
def test_dcaev_temporal_sp2_equals_single_process_torch(tmp_path, monkeypatch):
    """2 ranks = 1 data-parallel x 2 temporal-SP ranks of DC-AE-V (16 frames = 2 chunks, one per rank),
    model built under deepspeed.zero.Init, steps under the device-strict collective check. Step 4 gets a
    NaN batch: the run stops with the step number, exit 1, and ``latest`` stays at the step-3 checkpoint."""
    monkeypatch.setenv("MEGAVG_TEST_SYNTHETIC", "1")
    monkeypatch.setenv("MEGAVG_TEST_NAN_AT", "3")
    monkeypatch.setenv("MEGAVG_TEST_STRICT_DEVICES", "1")  # no CPU tensor may reach a collective (NCCL)
    run = tmp_path / "run"
    (tmp_path / "unused.tar").touch()
    overrides = [f"run.dir={run}", f"data.shards={tmp_path / 'unused.tar'}", "parallel.sp_size=2"]
    overrides += ["data.frames=16", "schedule.steps=6", "checkpoint.every=3", "parallel.zero_init=true"]
    with pytest.raises(AssertionError, match=r"failed \(1\)[\s\S]*step 4: loss is NaN or Inf"):
        torchrun(WORKER, 2, tmp_path / "out", "--config", TINY, *overrides)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    cfg = load_config(REPO / TINY, [*overrides, "schedule.steps=3"])

    ref_losses, ref_params, _ = reference_recon_run(cfg, dp_size=1)
    got = logged_losses(run)
    for step, ref in enumerate(ref_losses, start=1):
        assert got[step] == pytest.approx(ref, rel=1e-5), step
    total, worst = rel_errs(consolidated(run), ref_params)
    assert total <= 1e-5 and worst <= 1e-4, (total, worst)
