"""The config tree, the DeepSpeed JSON merge, the LR schedule and pre-launch validation (no processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from megavg.tasks.base import compute_dtype
from megavg.train.__main__ import prepare
from megavg.train.config import TrainConfig, dump_config, load_config
from megavg.train.engine import deepspeed_config, lr_lambda
from megavg.utils.errors import UserError
from megavg.utils.schema import to_dict

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs/train").glob("*.yaml"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert deepspeed_config(cfg)["zero_optimization"]["stage"] == 3


@pytest.mark.parametrize(
    "name",
    [
        "dcaev_demo.yaml",
        "dcaev_tiny_test.yaml",
        "wan_flow_tiny.yaml",
        "dcaev_1_recon.yaml",
        "dcaev_2_perceptual.yaml",
        "dcaev_3_gan.yaml",
    ],
)
def test_engine_configs_list_only_changes(name):
    path = REPO / "configs/train" / name
    defaults = to_dict(TrainConfig())
    for section, values in yaml.safe_load(path.read_text()).items():
        for key, value in values.items():
            assert defaults[section].get(key) != value, f"{name}: {section}.{key} repeats the default"


def test_overrides_are_parsed_as_yaml_and_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["schedule.steps=7", "optimizer.betas=[0.8, 0.9]", "model.args.dim=32"])
    assert cfg.schedule.steps == 7 and cfg.optimizer.betas == (0.8, 0.9) and cfg.model.args == {"dim": 32}
    again = load_config(write(tmp_path / "c.yaml", dump_config(cfg)))
    assert again == cfg


def test_exponent_floats_in_overrides_and_yaml_files(tmp_path):
    """`1e-4` is a string to YAML 1.1; a float key takes it (override and file alike)."""
    cfg = load_config(None, ["optimizer.lr=1e-4", "optimizer.weight_decay=5E-2"])
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 0.05
    cfg = load_config(write(tmp_path / "c.yaml", "optimizer:\n  lr: 3e-5\n  betas: [0.9, 9.5e-1]\n"))
    assert cfg.optimizer.lr == 3e-5 and cfg.optimizer.betas == (0.9, 0.95)
    assert isinstance(cfg.optimizer.lr, float)
    with pytest.raises(UserError, match="optimizer.lr: expected float, got str 'fast'"):
        load_config(None, ["optimizer.lr=fast"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["schedule.stepz=3"], "schedule.stepz: unknown key"),
        (["schedule.steps=many"], "schedule.steps: expected int"),
        (["checkpoint.exclude_frozen=3"], "checkpoint.exclude_frozen: expected true/false"),
        (["parallel.backend=mpi"], "parallel.backend: 'mpi' is not one of"),
        (["schedule.steps"], "expected section.key=value"),
        (["schedule.steps=0"], "schedule.steps: must be >= 1"),
    ],
)
def test_bad_keys_and_values_name_the_key(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)


def test_prepare_checks_task_model_data_and_deepspeed_json(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "shard-000000.tar").touch()
    base = ["--config", str(REPO / "configs/train/dcaev_tiny_test.yaml"), f"data.shards={shards}"]
    prepare(base)  # valid
    cases = {
        "task.name=nope": "unknown task 'nope'",
        "task.args={l2_weight: 1}": "task.args.l2_weight: unknown key",
        "model.preset=dc-ae-v-huge": "unknown model preset",
        "model.args={latent_channelz: 3}": "model.args.latent_channelz: unknown key",
        f"data.shards={tmp_path / 'missing'}": "no .tar shard found",
        "parallel.deepspeed=nowhere.json": "nowhere.json not found",
        "parallel.deepspeed_overrides={gradient_clipping: 1.0}": "gradient_clipping.* is set from",
    }
    for override, message in cases.items():
        with pytest.raises(UserError, match=message):
            prepare([*base, override])


def test_deepspeed_config_takes_batch_optimizer_and_clipping_from_the_tree():
    cfg = load_config(None, ["data.batch_size=3", "schedule.grad_accum=2", "optimizer.lr=0.5"])
    cfg.parallel.deepspeed = str(REPO / cfg.parallel.deepspeed)
    cfg.parallel.deepspeed_overrides = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}
    ds = deepspeed_config(cfg)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert ds["optimizer"]["params"]["lr"] == 0.5 and ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["zero_optimization"]["stage"] == 3  # merged, not replaced
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert compute_dtype(ds) is torch.bfloat16


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = load_config(None, ["schedule.steps=110", "schedule.warmup_steps=10", "schedule.decay=cosine"])
    cfg.schedule.min_lr_ratio = 0.1
    f = lr_lambda(cfg)
    assert [f(0), f(4), f(9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5) and f(110) == pytest.approx(0.1)


def test_cli_bad_key_fails_before_launch_with_one_line(tmp_path):
    cfg = write(tmp_path / "bad.yaml", "schedule:\n  step: 3\n")
    # before launch: one stderr line and no run folder (DeepSpeed's start-up would print and write more);
    # the timeout only guards a hang, generous for a loaded machine (no wall-clock assertion)
    proc = subprocess.run([sys.executable, "-m", "megavg.train", "--config", str(cfg)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: config schedule.step: unknown key")
    assert not (tmp_path / "runs").exists()


def test_invalid_yaml_and_json_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(write(tmp_path / "x.yaml", "run: [unclosed\n"))
    bad = write(tmp_path / "ds.json", "{not json")
    with pytest.raises(UserError, match="invalid JSON"):
        deepspeed_config(load_config(None, [f"parallel.deepspeed={bad}"]))
    assert json.loads((REPO / "configs/deepspeed/zero3_fp32.json").read_text())["bf16"]["enabled"] is False
