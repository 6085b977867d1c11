"""DC-AE-V reconstruction: video -> encode -> decode, loss = l1_weight * L1 + mse_weight * MSE.

Batches are ``{"video": B,3,T,H,W}`` in [-1, 1]. With ``parallel.sp_size > 1`` the autoencoder runs
temporally split over the SP group (``megavg.models.dcaev.parallelize.apply_temporal_sp``); every rank
of the group gets the same clip.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from megavg.models.dcaev.parallelize import apply_temporal_sp, gather_time, shard_time
from megavg.tasks.base import StepContext, unwrap
from megavg.tasks.base import Task as BaseTask


@dataclasses.dataclass
class Args:
    l1_weight: float = 1.0
    mse_weight: float = 1.0


class Task(BaseTask):
    Args = Args

    def parallelize(self, model: nn.Module, sp_group) -> nn.Module:
        return apply_temporal_sp(model, sp_group)

    def loss(self, model: nn.Module, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        video = batch["video"].to(ctx.device, ctx.dtype)  # B,3,T,H,W
        if ctx.sp_group is None:
            recon = model(video).float()
        else:  # this rank's whole chunks in, every rank's reconstruction gathered back (SP-sum grads)
            local = shard_time(video, unwrap(model).frame_chunk, ctx.sp_group)  # B,3,T_local,H,W
            recon = gather_time(model(local), ctx.sp_group).float()
        target = video.float()
        l1 = F.l1_loss(recon, target)
        mse = F.mse_loss(recon, target)
        return {"loss": self.args.l1_weight * l1 + self.args.mse_weight * mse, "l1": l1, "mse": mse}

    def tokens(self, batch: dict) -> int:
        return batch["video"][:, 0].numel()  # pixels x frames
