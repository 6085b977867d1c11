"""Damaged ZeRO-3 checkpoints of a real 2-rank run: ``tools/consolidate.py`` names the file (exit 2), and
resume skips a damaged newest tag and continues from the previous intact one, ending with the same
weights as the run that was never damaged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from megavg.train import consolidate as consolidate_cli
from megavg.utils.errors import run_cli
from tests.distributed.engine_reference import consolidated, logged_losses, rel_errs
from tests.distributed.launch import torchrun

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests/distributed/engine_worker.py"
TINY = "configs/train/dcaev_tiny_test.yaml"
STEP4 = "checkpoints/step_00000004"


def overrides(run: Path, shards: Path) -> list[str]:
    return [f"run.dir={run}", f"data.shards={shards}", "schedule.steps=4", "checkpoint.every=2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], dict[int, float]]:
    """A 2-rank fp32 ZeRO-3 run with checkpoints at steps 2 and 4; its step-4 weights and losses."""
    base = tmp_path_factory.mktemp("ckpt")
    (base / "unused.tar").touch()
    run = base / "run"
    env = {"MEGAVG_TEST_SYNTHETIC": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        torchrun(WORKER, 2, base / "out", "--config", TINY, *overrides(run, base / "unused.tar"))
    return run, consolidated(run), logged_losses(run)


def damaged_copy(run: Path, dest: Path, how: str) -> Path:
    """A copy of ``run`` with its newest tag damaged one way; returns the file an error must name."""
    shutil.copytree(run, dest)
    tag = dest / STEP4
    states = {
        "model": tag / "zero_pp_rank_1_mp_rank_00_model_states.pt",
        "optim": tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    }
    assert all(p.is_file() for p in states.values()), sorted(p.name for p in tag.iterdir())
    if how in ("garbage_latest", "latest_names_missing_tag"):
        text = b"\x89PNG\r\n garbage" if how == "garbage_latest" else b"step_00000008\n"
        (dest / "checkpoints/latest").write_bytes(text)
        return dest / "checkpoints/latest"
    if how.startswith("legacy_"):  # a tag written before manifests: damage found when DeepSpeed reads it
        (tag / "manifest.json").unlink()
        how = how.removeprefix("legacy_")
        if how == "truncated_optim":
            data = states["optim"].read_bytes()
            states["optim"].write_bytes(data[: len(data) // 2])
            return tag
    target = {"rng": tag / "rng/rank_00001.pt", "config": tag / "config.yaml"}.get(how.split("_")[-1])
    target = target or states[how.split("_")[-1]]
    if how.startswith("truncated"):
        target.write_bytes(target.read_bytes()[:1000])
    elif how.startswith("garbled"):
        data = bytearray(target.read_bytes())
        for i in range(len(data) // 3, len(data) // 3 + 64):
            data[i] ^= 0x5A
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    return target


CASES = ["garbage_latest", "latest_names_missing_tag", "truncated_model", "truncated_optim", "garbled_optim"]
CASES += ["missing_model", "missing_optim", "missing_rng", "missing_config", "legacy_truncated_optim"]
CASES += ["legacy_missing_model"]


@pytest.mark.distributed
@pytest.mark.parametrize("how", CASES)
def test_consolidate_names_the_damaged_file_and_exits_2(tmp_path, finished, capsys, how):
    run, _, _ = finished
    bad = damaged_copy(run, tmp_path / "run", how)
    with pytest.raises(SystemExit) as info:
        run_cli(consolidate_cli.main, [str(tmp_path / "run"), "--out", str(tmp_path / "model")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err and err.strip().endswith(lines[0]), err
    assert bad.name in lines[0] if how != "legacy_missing_model" else "model_states.pt: missing" in lines[0]
    assert not (tmp_path / "model").exists()


@pytest.mark.distributed
def test_resume_skips_damaged_newest_tag_and_equals_undamaged_run(tmp_path, finished, monkeypatch):
    """Step 4's optimizer shard of rank 1 is garbled (same size): both ranks resume from step 2 with one
    warning, retrain steps 3-4, and end with the weights and losses of the undamaged run."""
    run, weights, losses = finished
    damaged_copy(run, tmp_path / "run", "garbled_optim")
    monkeypatch.setenv("MEGAVG_TEST_SYNTHETIC", "1")
    args = overrides(tmp_path / "run", tmp_path / "unused.tar")
    (tmp_path / "unused.tar").touch()
    proc = torchrun(WORKER, 2, tmp_path / "out", "--config", TINY, *args)
    log = proc.stdout + proc.stderr
    warned = [line for line in log.splitlines() if "skipping unreadable checkpoint" in line]
    assert len(warned) == 1 and "zero_pp_rank_1_mp_rank_00_optim_states.pt" in warned[0], log[-3000:]
    assert "resuming from step_00000002" in warned[0] and "resumed from" in log
    total, worst = rel_errs(consolidated(tmp_path / "run"), weights)
    assert worst <= 1e-6, (total, worst)
    assert logged_losses(tmp_path / "run") == pytest.approx(losses, rel=1e-6)
