"""Independent single-process references for the engine tests: plain PyTorch AdamW, no DeepSpeed."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

import megavg.models
from megavg.train.config import TrainConfig
from tests.distributed.engine_worker import synthetic_batch


def reference_recon_run(cfg: TrainConfig, dp_size: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train DC-AE-V reconstruction on the global synthetic batches with torch AdamW; returns
    (loss per step, final parameters). Gradient clipping as torch's ``clip_grad_norm_``."""
    torch.manual_seed(cfg.schedule.seed)
    model = megavg.models.build(cfg.model.preset)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optimizer.lr,
        betas=cfg.optimizer.betas,
        eps=cfg.optimizer.eps,
        weight_decay=cfg.optimizer.weight_decay,
    )
    shape = (3, cfg.data.frames, *cfg.data.size)
    losses = []
    for step in range(cfg.schedule.steps):
        video = synthetic_batch(step, cfg.data.batch_size * dp_size, "video", shape)["video"]
        recon = model(video)
        loss = F.l1_loss(recon, video) + F.mse_loss(recon, video)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.named_parameters()}


def logged_losses(run_dir: Path) -> dict[int, float]:
    """``train/loss`` per step from ``metrics.jsonl``."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {rec["step"]: rec["train/loss"] for rec in map(json.loads, lines)}


def consolidated(run_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of the latest ZeRO-3 checkpoint, consolidated by DeepSpeed's own tool."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"))


def rel_errs(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(||got - ref|| / ||ref|| over all parameters of ``ref`` together, the largest such ratio of one
    tensor). Adam turns float-rounding differences of near-zero gradients into lr-sized steps, so single
    small tensors drift more than the whole."""
    assert set(ref) <= set(got), sorted(set(ref) - set(got))[:3]
    diff = {k: (got[k].float() - v).norm() for k, v in ref.items()}
    total = torch.stack(list(diff.values())).norm() / torch.stack([v.norm() for v in ref.values()]).norm()
    worst = max((diff[k] / v.norm().clamp_min(1e-12)).item() for k, v in ref.items())
    return total.item(), worst


def initial_params(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights every run starts from (same seed as the trainer)."""
    torch.manual_seed(cfg.schedule.seed)
    return dict(megavg.models.build(cfg.model.preset).named_parameters())
