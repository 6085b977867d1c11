"""Independent single-process references for the engine tests: plain PyTorch AdamW, no DeepSpeed."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import megavg.models
from megavg.train.config import TrainConfig
from tests.distributed.engine_worker import synthetic_batch


def reference_recon_run(
    cfg: TrainConfig, dp_size: int, lr_factor=None
) -> tuple[list[float], dict[str, torch.Tensor], dict[str, list[float]]]:
    """Train DC-AE-V reconstruction on the global synthetic batches (all DP ranks and gradient-accumulation
    micro-batches of a step in one batch) with torch AdamW; returns (loss per step, final parameters,
    {"grad_norm": pre-clipping gradient norm per step, "lr": learning rate after each step}). Gradient
    clipping as torch's ``clip_grad_norm_``; ``lr_factor(n)`` drives a torch ``LambdaLR`` when given."""
    model = initial_model(cfg)
    opt = _adamw(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor) if lr_factor else None
    seen: dict[str, list[float]] = {"grad_norm": [], "lr": []}
    shape = (3, cfg.data.frames, *cfg.data.size)
    losses = []
    for step in range(cfg.schedule.steps):
        ga, global_batch = cfg.schedule.grad_accum, cfg.data.batch_size * dp_size
        micro = [synthetic_batch(step * ga + m, global_batch, "video", shape) for m in range(ga)]
        video = torch.cat([b["video"] for b in micro])  # micro-batches step*ga .. step*ga+ga-1
        recon = model(video)
        loss = F.l1_loss(recon, video) + F.mse_loss(recon, video)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
        seen["grad_norm"].append(norm.item())
        opt.step()
        opt.zero_grad()
        if sched:
            sched.step()
        seen["lr"].append(opt.param_groups[0]["lr"])
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.named_parameters()}, seen


def logged_losses(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    """``train/loss`` (or another scalar ``key``) per step from ``metrics.jsonl``."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {rec["step"]: rec[key] for rec in map(json.loads, lines)}


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


def initial_model(cfg: TrainConfig) -> torch.nn.Module:
    """The model every run starts from: ``model.init`` when set, else the preset under the run's seed."""
    if cfg.model.init:
        return megavg.models.load(cfg.model.init)
    torch.manual_seed(cfg.schedule.seed)
    return megavg.models.build(cfg.model.preset)


def reference_flow_run(
    cfg: TrainConfig, dp_size: int
) -> tuple[list[float], dict[str, torch.Tensor], list[float]]:
    """Flow matching (DESIGN §5) on the global synthetic batches, written out independently of
    ``megavg.tasks.flow_matching``; noise per data-parallel slice from the trainer's seeding rule.
    Returns (loss per step, final parameters, gradient norm per step before clipping)."""
    from megavg.train.loop import micro_generator

    torch.manual_seed(cfg.schedule.seed)
    model = megavg.models.build(cfg.model.preset)
    for name, param in model.named_parameters():  # model.trainable: train only matching names
        param.requires_grad_(any(fnmatch.fnmatchcase(name, p) for p in cfg.model.trainable or ["*"]))
    opt = _adamw(model, cfg)
    args, b = cfg.task.args, cfg.data.batch_size
    losses, norms = [], []
    for step in range(cfg.schedule.steps):
        full = synthetic_batch(step, b * dp_size, "latent", (4, 2, *cfg.data.size))
        loss = 0.0
        for r in range(dp_size):
            x0, text = full["latents"][r * b : (r + 1) * b], full["text"][r * b : (r + 1) * b]
            gen = micro_generator(cfg.schedule.seed, step, r)
            u = torch.rand(b, generator=gen)
            sigma = args["shift"] * u / (1 + (args["shift"] - 1) * u)
            noise = torch.randn(x0.shape, generator=gen)
            keep = (torch.rand(b, generator=gen) >= args["text_dropout"]).float()
            s = sigma.view(b, 1, 1, 1, 1)
            pred = model((1 - s) * x0 + s * noise, 1000 * sigma, text * keep.view(b, 1, 1))
            loss = loss + F.mse_loss(pred, noise - x0) / dp_size
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], cfg.optimizer.grad_clip)
        norms.append(norm.item())
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.named_parameters()}, norms


def _adamw(model, cfg: TrainConfig) -> torch.optim.AdamW:
    o = cfg.optimizer
    return torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
    )
