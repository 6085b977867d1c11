"""The AE-Adapt-V chain through the real trainer and consolidation, on tiny presets (one process each):
student -> phase 1 (alignment) -> phase 2 (patch/head) -> phase 3 (LoRA) -> merged model folder.
Checks what each phase may and may not change, and that the merged folder reproduces the LoRA model."""

import subprocess
import sys

import torch

import megavg.models
from megavg.data import write_latent_shards
from megavg.models import registry
from megavg.tasks import build_task
from megavg.tasks.adapt_lora import lora_targets
from megavg.train.config import load_config
from tests.distributed.launch import REPO

FAST = ["data.kind=latent", "schedule.steps=2", "parallel.deepspeed=configs/deepspeed/zero3_fp32.json",
        "logging.tensorboard=false", "model.preset=wan-tiny-student-t2v"]  # fmt: skip


def run(*args):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def train_and_export(tmp_path, name, config, *overrides):
    run("-m", "megavg.train", "--config", f"configs/train/{config}.yaml", *FAST, *overrides,
        f"run.dir={tmp_path / name}", f"data.shards={tmp_path / 'latents'}")  # fmt: skip
    run("tools/consolidate.py", str(tmp_path / name), "--out", str(tmp_path / f"{name}-model"))
    return registry.load_state_dict(tmp_path / f"{name}-model")


def changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_three_phases_and_merge(tmp_path):
    torch.manual_seed(0)
    base = megavg.models.build("wan-tiny-t2v")
    base.save(tmp_path / "base")
    c_student, c_base, text_dim = 8, base.args.in_channels, base.args.text_dim
    samples = [{"latents": torch.randn(c_student, 2, 4, 4), "text": torch.randn(5, text_dim),
                "teacher_latents": torch.randn(c_base, 2, 8, 8)} for _ in range(4)]  # fmt: skip
    write_latent_shards(samples, tmp_path / "latents", samples_per_shard=2)
    run("tools/make_student.py", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "student"),
        "--in-channels", str(c_student), "--out-channels", str(c_student))  # fmt: skip
    student = registry.load_state_dict(tmp_path / "student")
    assert not student["head.linear.weight"].any()

    teacher = f"task.args.teacher={tmp_path / 'base'}"
    align = train_and_export(
        tmp_path, "align", "adapt_1_align", f"model.init={tmp_path / 'student'}", teacher
    )
    assert changed(student, align) == {"patch_embed.weight", "patch_embed.bias"}

    head = train_and_export(tmp_path, "head", "adapt_2_head", f"model.init={tmp_path / 'align-model'}",
                            "parallel.sp_size=1", "parallel.zero_init=false")  # fmt: skip
    assert changed(align, head) == {
        "patch_embed.weight",
        "patch_embed.bias",
        "head.linear.weight",
        "head.linear.bias",
    }

    lora_overrides = [f"model.init={tmp_path / 'head-model'}", "parallel.sp_size=1", "task.args.rank=4",
                      "task.args.alpha=8", "optimizer.lr=0.05"]  # fmt: skip
    merged = train_and_export(tmp_path, "lora", "adapt_3_lora", *lora_overrides)
    targets = {
        f"{name}.weight"
        for name in lora_targets(
            megavg.models.build("wan-tiny-student-t2v"), ["cross_attn", "text_embed", "head"]
        )
    }
    assert set(merged) == set(head)
    assert (
        changed(head, merged)
        - {"patch_embed.weight", "patch_embed.bias", "head.linear.weight", "head.linear.bias"}
        <= targets
    )
    assert changed(head, merged) & targets  # the LoRA moved the adapted weights

    # The merged folder equals the LoRA model (peft forward) with the checkpoint's adapters loaded.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    cfg = load_config(tmp_path / "lora" / "config.yaml")
    lora_model = build_task(cfg).build_model()
    trained = get_fp32_state_dict_from_zero_checkpoint(
        str(tmp_path / "lora" / "checkpoints"), exclude_frozen_parameters=True
    )
    lora_model.load_state_dict(trained, strict=False)
    plain = megavg.models.load(tmp_path / "lora-model")
    x, t, text = torch.randn(1, c_student, 2, 4, 4), torch.tensor([300.0]), torch.randn(1, 5, text_dim)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, t, text), lora_model(x, t, text), rtol=1e-5, atol=1e-5)
