"""AE-Adapt-V phases: alignment loss against a plain formula, LoRA placement, and LoRA merge against
peft's own forward pass."""

import pytest
import torch
import torch.nn.functional as F

import megavg.models
from megavg.tasks import task_module
from megavg.tasks.adapt_lora import lora_scale, lora_targets, merge_lora
from megavg.tasks.base import StepContext
from megavg.train.config import load_config
from megavg.utils.errors import UserError
from megavg.utils.lazy import materialize
from megavg.utils.schema import from_dict


def make_task(name, *overrides):
    cfg = load_config(None, [f"task.name={name}", *overrides])
    module = task_module(name)
    return module.Task(from_dict(module.Args, cfg.task.args, "task.args"), cfg)


def ctx():
    return StepContext(0, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32)


def test_lora_goes_everywhere_but_cross_attention_text_and_head():
    model = megavg.models.build("wan-tiny-t2v")
    blocks = len(model.blocks)
    expected = {f"time_embed.{n}" for n in ("linear_1", "linear_2", "proj")}
    for i in range(blocks):
        expected |= {f"blocks.{i}.self_attn.{n}" for n in "qkvo"}
        expected |= {f"blocks.{i}.ffn.{n}" for n in ("fc1", "fc2")}
    assert set(lora_targets(model, ["cross_attn", "text_embed", "head"])) == expected


def test_lora_task_trains_lora_embedder_and_head_only():
    task = make_task(
        "adapt_lora", "model.preset=wan-tiny-student-t2v", "task.args.rank=4", "task.args.alpha=8"
    )
    model = task.build_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"patch_embed.weight", "head.linear.weight", "head.linear.bias"} <= trainable
    assert all(".lora_" in n or n.startswith(("patch_embed.", "head.linear.")) for n in trainable)
    assert "blocks.0.self_attn.q.lora_A.default.weight" in trainable
    assert not any("cross_attn" in n and "lora" in n for n, _ in model.named_parameters())


def test_merged_weights_reproduce_peft_forward():
    torch.manual_seed(0)
    task = make_task("adapt_lora", "model.preset=wan-tiny-t2v", "task.args.rank=4", "task.args.alpha=8")
    plain = megavg.models.build("wan-tiny-t2v")
    lora_model = task.build_model()
    lora_model.load_state_dict(plain.state_dict(), strict=False)  # peft keeps base weights under base_layer
    state = {
        k.replace(".base_layer.", "."): v for k, v in lora_model.state_dict().items() if ".lora_" not in k
    }
    plain.load_state_dict(state)
    with torch.no_grad():
        for name, param in lora_model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.5)  # peft starts B at zero: make the adapter matter
    args = plain.args
    latents = torch.randn(1, args.in_channels, 2, 4, 4)
    t, text = torch.tensor([500.0]), torch.randn(1, 5, args.text_dim)
    with torch.no_grad():
        expected = lora_model(latents, t, text)
        unmerged = plain(latents, t, text)
        trained = {n: p.detach() for n, p in lora_model.named_parameters() if p.requires_grad}
        merged = merge_lora(plain.state_dict(), trained, lora_scale(task.args))
        plain.load_state_dict({k: materialize(v) for k, v in merged.items()})
        torch.testing.assert_close(plain(latents, t, text), expected, rtol=1e-5, atol=1e-5)
    assert (unmerged - expected).abs().max() > 1e-3  # the adapter changed the output


def test_alignment_loss_is_pooled_teacher_mse(tmp_path):
    base = megavg.models.build("wan-tiny-t2v")
    base.save(tmp_path / "base")
    teacher_dir = f"task.args.teacher={tmp_path / 'base'}"
    task = make_task("adapt_align", "model.preset=wan-tiny-student-t2v", teacher_dir)
    task.validate()
    student = task.build_model()
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == {"patch_embed.weight", "patch_embed.bias"}
    # f32 latents with patch 1 (4x4 tokens) vs f8 teacher latents with patch 2 (8x8 tokens)
    latents = torch.randn(2, student.args.in_channels, 3, 4, 4)
    teacher_latents = torch.randn(2, base.args.in_channels, 3, 16, 16)
    loss = task.loss(student, {"latents": latents, "teacher_latents": teacher_latents}, ctx())["loss"]
    with torch.no_grad():
        w, b = base.patch_embed.weight, base.patch_embed.bias
        teacher = F.conv3d(teacher_latents, w, b, stride=w.shape[2:])  # B, D, 3, 8, 8
        pooled = teacher.reshape(*teacher.shape[:3], 4, 2, 4, 2).mean(dim=(4, 6))  # AvgPool(1,2,2)
        embedded = F.conv3d(latents, student.patch_embed.weight, student.patch_embed.bias)  # B, D, 3, 4, 4
    torch.testing.assert_close(loss, F.mse_loss(embedded, pooled))
    loss.backward()
    assert student.patch_embed.weight.grad is not None
    assert student.blocks[0].self_attn.q.weight.grad is None


def test_alignment_needs_teacher_latents_and_folder(tmp_path):
    with pytest.raises(UserError, match="task.args.teacher"):
        make_task("adapt_align", "model.preset=wan-tiny-student-t2v").validate()
