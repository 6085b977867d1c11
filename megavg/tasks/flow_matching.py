"""Flow matching for the Wan DiT on given latents (DESIGN §5).

x_t = (1 - sigma) x0 + sigma eps, target eps - x0; sigma = shift u / (1 + (shift - 1) u) with u uniform
(the shifted schedule: shift 8 for T2V, 5 for I2V); timestep = 1000 sigma. A fraction ``text_dropout``
of samples get a zero text embedding (classifier-free guidance training). Batches are
``{"latents": B,C,T,H,W, "text": B,L,D}``. With ``parallel.sp_size > 1`` the DiT runs Ulysses over the
SP group; every rank of the group draws the same sample, noise and timestep (same generator seed).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from megavg.infer.sampling import shift_sigmas as shifted_sigmas  # uniform u -> sigma, towards noise
from megavg.tasks.base import StepContext, model_args
from megavg.tasks.base import Task as BaseTask


@dataclasses.dataclass
class Args:
    shift: float = 8.0
    text_dropout: float = 0.1
    num_train_timesteps: int = 1000


class Task(BaseTask):
    Args = Args

    def parallelize(self, model: nn.Module, sp_group) -> nn.Module:
        from megavg.models.wan.parallelize import apply_ulysses

        return apply_ulysses(model, sp_group)

    def loss(self, model: nn.Module, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        x0 = batch["latents"].float()  # B,C,T,H,W
        text = batch["text"].float()  # B,L,D
        b = x0.shape[0]
        sigma = shifted_sigmas(torch.rand(b, generator=ctx.generator), self.args.shift)
        noise = torch.randn(x0.shape, generator=ctx.generator)
        keep = torch.rand(b, generator=ctx.generator) >= self.args.text_dropout
        text = text * keep.view(b, 1, 1)
        s = sigma.view(b, 1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        timestep = sigma * self.args.num_train_timesteps
        pred = model(x_t.to(ctx.device, ctx.dtype), timestep.to(ctx.device), text.to(ctx.device, ctx.dtype))
        mse = F.mse_loss(pred.float(), (noise - x0).to(ctx.device))
        return {"loss": mse, "sigma_mean": sigma.mean().to(ctx.device)}

    def tokens(self, batch: dict) -> int:
        b, _, t, h, w = batch["latents"].shape
        return b * t * h * w // math.prod(self.patch_size)

    @functools.cached_property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(model_args(self.cfg.model).patch_size)
