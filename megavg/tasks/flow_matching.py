"""Flow matching for the Wan DiT on given latents (DESIGN §5).

x_t = (1 - sigma) x0 + sigma eps, target eps - x0; sigma = shift u / (1 + (shift - 1) u) with u uniform
(the shifted schedule: shift 8 for T2V, 5 for I2V); timestep = 1000 sigma. A fraction ``text_dropout``
of samples get the null condition instead of their caption (classifier-free guidance training): the
padded encoding of the empty caption that pre-computation stores as ``null_text``, the same context
``generate`` uses for the unconditional branch (:mod:`megavg.conditioning.text`; all zeros, with a
warning, for shards written before ``null_text`` existed). Batches are
``{"latents": B,C,T,H,W, "text": B,L,D}``. An I2V model (``image_dim`` set) also needs ``condition``
[B, 4 + C, T, H, W] (mask, then the encoded first frame), concatenated to x_t on the channel axis (DiT input
= concat(noisy C, mask 4, condition C)), and the CLIP ``image`` tokens [B, N, D'], which are never dropped;
the loss covers the C predicted channels of every frame. With ``parallel.sp_size > 1`` the DiT runs
Ulysses over the SP group; every rank of the group draws the same sample, noise and timestep (same
generator seed).
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
from megavg.utils.errors import UserError
from megavg.utils.logging import get_logger

log = get_logger("megavg.tasks.flow_matching")


@dataclasses.dataclass
class Args:
    shift: float = 8.0
    text_dropout: float = 0.1
    num_train_timesteps: int = 1000


class Task(BaseTask):
    Args = Args
    _warned_null = False  # the missing-null_text warning, once per run

    def check_parallel(self, sp_size: int) -> None:
        from megavg.models.wan.parallelize import check_sp_size

        check_sp_size(model_args(self.cfg.model).num_heads, sp_size)

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
        text = torch.where(keep.view(b, 1, 1), text, self.null_text(batch, text))
        s = sigma.view(b, 1, 1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        timestep = sigma * self.args.num_train_timesteps
        inputs, image = self.model_inputs(x_t, batch)
        image = image.to(ctx.device, ctx.dtype) if image is not None else None
        text, timestep = text.to(ctx.device, ctx.dtype), timestep.to(ctx.device)
        pred = model(inputs.to(ctx.device, ctx.dtype), timestep, text, image=image)
        mse = F.mse_loss(pred.float(), (noise - x0).to(ctx.device))
        return {"loss": mse, "sigma_mean": sigma.mean().to(ctx.device)}

    def null_text(self, batch: dict, text: torch.Tensor) -> torch.Tensor:
        """The null condition [B, L, D] for dropped captions: the batch's ``null_text`` (the encoded empty
        caption), or zeros for shards without one (warned once: sampling's null condition differs)."""
        if "null_text" in batch:
            null = batch["null_text"].float()
            if null.shape != text.shape:
                raise UserError(
                    f"latent shards: null_text {tuple(null.shape)} does not match text {tuple(text.shape)}"
                )
            return null
        if self.args.text_dropout > 0 and not self._warned_null:
            log.warning(
                "latent shards carry no null_text (written before megavg stored it): text dropout uses "
                "all-zero text, which is not the empty-caption context generate uses for CFG; re-run "
                "python -m megavg.infer.precompute to train with the matching null condition"
            )
            self._warned_null = True
        return torch.zeros_like(text)

    def model_inputs(self, x_t: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The DiT's latent input and image tokens: x_t itself (T2V), or x_t + condition and CLIP (I2V)."""
        if not self.is_i2v:
            return x_t, None
        missing = [name for name in ("condition", "image") if name not in batch]
        if missing:
            raise UserError(
                f"task {self.cfg.task.name}: the I2V model needs {missing[0]!r} in the latent shards "
                "(python -m megavg.infer.precompute --i2v)"
            )
        return torch.cat([x_t, batch["condition"].float()], dim=1), batch["image"].float()  # B, 2C + 4, ...

    @functools.cached_property
    def is_i2v(self) -> bool:
        return model_args(self.cfg.model).is_i2v

    def flop_inputs(self, batch: dict) -> tuple:
        """(latents incl. the I2V condition channels, timestep, text, image) as :meth:`loss` feeds them."""
        b, c, *grid = batch["latents"].shape
        if self.is_i2v:
            c += batch["condition"].shape[1]
        image = tuple(batch["image"].shape) if self.is_i2v else None
        return (b, c, *grid), (b,), tuple(batch["text"].shape), image

    def tokens(self, batch: dict) -> int:
        b, _, t, h, w = batch["latents"].shape
        return b * t * h * w // math.prod(self.patch_size)

    @functools.cached_property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(model_args(self.cfg.model).patch_size)
