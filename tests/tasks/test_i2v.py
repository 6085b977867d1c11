"""I2V inputs of the adaptation tasks against plain formulas: the flow-matching loss feeds the DiT
concat(x_t, condition) and the CLIP tokens; alignment embeds latents + condition on both sides."""

import pytest
import torch
import torch.nn.functional as F

import megavg.models
from megavg.tasks.flow_matching import shifted_sigmas
from megavg.utils.errors import UserError
from tests.tasks.test_adapt import ctx, make_task

PRESET = "model.preset=wan-tiny-student-i2v"  # 20 in = 8 noisy + 4 mask + 8 condition; CLIP width 24


def i2v_batch(c=8, t=2, h=4, w=4):
    condition = torch.cat([torch.zeros(1, 4, t, h, w), torch.randn(1, c, t, h, w)], dim=1)
    condition[:, :4, 0] = 1.0
    return {"latents": torch.randn(1, c, t, h, w), "text": torch.randn(1, 5, 32), "condition": condition,
            "image": torch.randn(1, 5, 24)}  # fmt: skip


def test_flow_matching_i2v_loss_is_the_plain_formula():
    torch.manual_seed(0)
    task = make_task("flow_matching", PRESET, "task.args.shift=5.0", "task.args.text_dropout=0.0")
    model = task.build_model()  # random head: the prediction depends on every input
    batch = i2v_batch()
    loss = task.loss(model, batch, ctx())["loss"]
    g = ctx().generator  # the same draws, in the task's order: u, noise, text-dropout coin
    sigma = shifted_sigmas(torch.rand(1, generator=g), 5.0).view(1, 1, 1, 1, 1)
    noise = torch.randn(batch["latents"].shape, generator=g)
    x0 = batch["latents"]
    x_t = (1 - sigma) * x0 + sigma * noise
    with torch.no_grad():
        pred = model(torch.cat([x_t, batch["condition"]], dim=1), sigma.view(1) * 1000, batch["text"],
                     image=batch["image"])  # fmt: skip
    torch.testing.assert_close(loss, F.mse_loss(pred, noise - x0))
    # both conditions matter: another first frame or other image tokens change the loss
    for name in ("condition", "image"):
        other = {**batch, name: torch.randn_like(batch[name])}
        assert (task.loss(model, other, ctx())["loss"] - loss).abs() > 1e-6


def test_flow_matching_i2v_needs_condition_and_image():
    task = make_task("flow_matching", PRESET)
    model = task.build_model()
    batch = i2v_batch()
    for name in ("condition", "image"):
        with pytest.raises(UserError, match=f"needs '{name}'.*--i2v"):
            task.loss(model, {k: v for k, v in batch.items() if k != name}, ctx())


def test_alignment_i2v_embeds_latents_and_condition(tmp_path):
    base = megavg.models.build("wan-tiny-i2v")  # 12 in = 4 + 4 mask + 4
    base.save(tmp_path / "base")
    task = make_task("adapt_align", PRESET, f"task.args.teacher={tmp_path / 'base'}")
    student = task.build_model()
    batch = i2v_batch(t=3)
    teacher_cond = torch.randn(1, 8, 3, 8, 8)
    batch.update(teacher_latents=torch.randn(1, 4, 3, 8, 8), teacher_condition=teacher_cond)
    loss = task.loss(student, batch, ctx())["loss"]
    with torch.no_grad():
        w, b = base.patch_embed.weight, base.patch_embed.bias
        teacher_in = torch.cat([batch["teacher_latents"], teacher_cond], dim=1)  # 1, 12, 3, 8, 8
        teacher = F.conv3d(teacher_in, w, b, stride=w.shape[2:])  # 1, D, 3, 4, 4: same grid as the student
        student_in = torch.cat([batch["latents"], batch["condition"]], dim=1)  # 1, 20, 3, 4, 4
        embedded = F.conv3d(student_in, student.patch_embed.weight, student.patch_embed.bias)
    torch.testing.assert_close(loss, F.mse_loss(embedded, teacher))
    with pytest.raises(UserError, match="no 'teacher_condition'"):
        task.loss(student, {k: v for k, v in batch.items() if k != "teacher_condition"}, ctx())
