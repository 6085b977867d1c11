"""AE-Adapt-V phase 1: embedding alignment (DESIGN.md section 5).

Only the student's new patch embedder trains. Teacher: the frozen patch embedder of the base Wan DiT
applied to the base VAE's latents of the same clip (``teacher_latents`` in the latent shards). Loss: MSE
between the teacher's token grid average-pooled down to the student's grid (AvgPool(1,2,2) for f8/patch-2
vs f32/patch-1; temporal average pooling when frame counts differ) and the student's embedding.
I2V students embed concat(latents, ``condition``) and the teacher concat(``teacher_latents``,
``teacher_condition``) (mask, then the encoded first frame, each in its own VAE's space), the way each
model takes its input without the noise.

``model.init`` is a student folder (``tools/make_student.py``); training it whole (frozen backbone, as
ZeRO-3 partitions it) means the consolidated result is directly the phase-2 starting point.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from megavg.models import registry
from megavg.tasks.base import StepContext, unwrap
from megavg.tasks.base import Task as BaseTask
from megavg.utils.errors import UserError

TEACHER_KEYS = ("patch_embed.weight", "patch_embed.bias")


@dataclasses.dataclass
class Args:
    teacher: str = ""  # megavg model folder of the base Wan DiT (only its patch embedder is read)


def pool_to(teacher: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Average-pool a B,D,T,H,W token grid to ``grid`` (exact window means when the sizes divide)."""
    return F.adaptive_avg_pool3d(teacher, grid)


def embedder_inputs(batch: dict, i2v: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) embedder inputs [B, C, T, H, W]: the latents, plus the conditions for I2V."""
    names = ["latents", "teacher_latents"] + (["condition", "teacher_condition"] if i2v else [])
    missing = [name for name in names if name not in batch]
    if missing:
        raise UserError(f"task adapt_align: the latent shards hold no {missing[0]!r}")
    if not i2v:
        return batch["latents"], batch["teacher_latents"]
    student = torch.cat([batch["latents"], batch["condition"]], dim=1)  # B, C + 4 + C, T, h, w
    teacher = torch.cat([batch["teacher_latents"], batch["teacher_condition"]], dim=1)  # B, C' + 4 + C', ...
    return student, teacher


class Task(BaseTask):
    Args = Args

    def validate(self) -> None:
        super().validate()
        if not self.args.teacher or not Path(self.args.teacher).is_dir():
            raise UserError(f"config task.args.teacher: {self.args.teacher!r} is not a model folder")
        registry.read_config(self.args.teacher)

    def build_model(self) -> nn.Module:
        model = super().build_model()
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("patch_embed."))
        state = registry.load_state_dict(self.args.teacher, list(TEACHER_KEYS))
        weight = state["patch_embed.weight"]  # D, C, pt, ph, pw
        self.teacher = nn.Conv3d(weight.shape[1], weight.shape[0], weight.shape[2:], stride=weight.shape[2:])
        self.teacher.load_state_dict({"weight": weight, "bias": state["patch_embed.bias"]})
        self.teacher.requires_grad_(False)
        if self.teacher.out_channels != model.patch_embed.out_channels:
            raise UserError(f"{self.args.teacher}: teacher width {weight.shape[0]} != student width")
        return model

    def loss(self, model: nn.Module, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        student_in, teacher_in = embedder_inputs(batch, unwrap(model).args.takes_image)
        student = unwrap(model).patch_embed(student_in.to(ctx.device, ctx.dtype))  # B,D,T,h,w
        with torch.no_grad():
            self.teacher.to(ctx.device, ctx.dtype)
            teacher = self.teacher(teacher_in.to(ctx.device, ctx.dtype))  # B,D,T',2h,2w
            target = pool_to(teacher.float(), tuple(student.shape[2:]))
        return {"loss": F.mse_loss(student.float(), target)}

    def tokens(self, batch: dict) -> int:
        return batch["latents"][:, 0].numel()
