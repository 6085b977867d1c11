"""Periodic evaluation of DC-AE-V training on held-back clips: PSNR, SSIM, LPIPS, a reconstruction strip.

Every rank reconstructs its share of the held-back clips (the same clips at every evaluation: the loader
is rebuilt with the run's seed and no shuffling), sums are all-reduced, rank 0 logs ``eval/psnr``,
``eval/ssim`` (and ``eval/lpips`` when real VGG weights were given) to tensorboard and ``metrics.jsonl``,
and writes ``eval/reconstruction``: an image whose top row holds frames of the first clip and whose bottom
row holds their reconstruction (an image strip rather than ``add_video``, which needs moviepy).
With ``i3d`` weights (:func:`megavg.eval.i3d.load_i3d`), ``eval/rfvd`` is the Fréchet distance between
the I3D features of the clips and of their reconstructions (:mod:`megavg.eval`, preprocessing at
``i3d_size``): features are gathered from the data-parallel ranks (one copy per sequence-parallel group).
With few clips the covariances are rank-deficient: rFVD over 8 clips tracks progress within a run but is
not comparable with published FVD (computed over thousands of videos).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megavg.metrics import video as video_metrics
from megavg.metrics.perceptual import LPIPS, video_distance
from megavg.parallel import state
from megavg.utils.errors import UserError


@dataclasses.dataclass
class EvalArgs:
    """``shards``: video shards held back from training; evaluated every ``every`` steps (0 = never) on
    ``clips`` clips in total (rounded up to whole batches on every data-parallel rank), at the training
    data's frames and size; ``strip_frames`` frames of the first clip go into the image summary.
    ``i3d``: I3D weights for rFVD (a pytorch-i3d state dict, a TorchScript I3D, or ``random`` for tests;
    empty = no rFVD), its input resized to ``i3d_size`` (224 as in FVD)."""

    shards: str = ""
    every: int = 0
    clips: int = 8
    strip_frames: int = 8
    i3d: str = ""
    i3d_size: int = 224

    def __post_init__(self) -> None:
        if self.every < 0 or self.clips < 1 or self.strip_frames < 1 or self.i3d_size < 16:
            raise UserError(
                "config task.args.eval: every must be >= 0, clips and strip_frames >= 1, i3d_size >= 16"
            )
        if self.every and not self.shards:
            raise UserError("config task.args.eval.shards: set the held-back video shards (eval.every > 0)")
        if self.i3d and self.i3d != "random" and not Path(self.i3d).is_file():
            raise UserError(f"config task.args.eval.i3d: {self.i3d} not found")
        if self.i3d and self.clips < 2:
            raise UserError("config task.args.eval.clips: rFVD (eval.i3d) needs at least 2 clips")


def frame_strip(target: torch.Tensor, recon: torch.Tensor, count: int) -> torch.Tensor:
    """3, 2H, n*W image in [0, 1]: ``count`` evenly spaced frames of one clip 3,T,H,W over their
    reconstruction."""
    T = target.shape[1]
    idx = torch.linspace(0, T - 1, min(count, T)).round().long()
    rows = [v[:, idx].clamp(-1, 1).permute(0, 2, 1, 3).flatten(2) for v in (target, recon)]  # 3,H,n*W
    return (torch.cat(rows, dim=1).float().cpu() + 1) / 2


class Evaluator:
    """Runs :class:`EvalArgs` evaluations; ``reconstruct(video) -> recon`` is the task's forward pass."""

    def __init__(self, args: EvalArgs, data_cfg, seed: int, lpips: LPIPS | None) -> None:
        self.args, self.seed, self.lpips = args, seed, lpips
        self.data_cfg = dataclasses.replace(data_cfg, shards=args.shards, shuffle_buffer=1, num_workers=0)
        self.i3d = None
        if args.i3d:
            from megavg.eval.i3d import load_i3d

            self.i3d = load_i3d(args.i3d)

    def due(self, step: int) -> bool:
        return bool(self.args.every) and step % self.args.every == 0

    def run(self, reconstruct: Callable[[torch.Tensor], torch.Tensor], step: int, metrics, device) -> None:
        """Evaluate (collective: every rank calls it) and log on rank 0."""
        from megavg.data import build_loader

        dp_rank, dp_size = state.get_data_parallel_rank(), state.get_data_parallel_world_size()
        batches = math.ceil(self.args.clips / (dp_size * self.data_cfg.batch_size))
        loader = build_loader(self.data_cfg, dp_rank, dp_size, self.seed)
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # psnr, ssim, lpips, clips
        strip = None
        feats: list[tuple] = []  # (real, recon) I3D features of each batch
        with torch.no_grad():
            for batch in itertools.islice(loader, batches):
                video = batch["video"].to(device)
                recon = reconstruct(video).float().clamp(-1, 1)
                sums[0] += video_metrics.psnr(recon, video).sum().double()
                sums[1] += video_metrics.ssim(recon, video).sum().double()
                if self.lpips is not None:
                    sums[2] += video_distance(self.lpips, recon, video).double() * video.shape[0]
                sums[3] += video.shape[0]
                if strip is None:
                    strip = frame_strip(video[0], recon[0], self.args.strip_frames)
                if self.i3d is not None:
                    feats.append(self.features(video, recon, device))
        dist.all_reduce(sums)
        rfvd = self.rfvd(feats) if self.i3d is not None else None
        if not metrics.enabled:
            return
        mean = (sums[:3] / sums[3]).tolist()
        scalars = {"eval/psnr": mean[0], "eval/ssim": mean[1]}
        if self.lpips is not None:
            scalars["eval/lpips"] = mean[2]
        if rfvd is not None:
            scalars["eval/rfvd"] = rfvd
        metrics.log(step, scalars)
        if metrics.tb is not None:
            metrics.tb.add_image("eval/reconstruction", strip, step)

    def features(self, video: torch.Tensor, recon: torch.Tensor, device) -> tuple:
        """I3D features [B, 400] (float64, CPU) of a batch of clips and of their reconstructions."""
        from megavg.eval.i3d import i3d_features

        self.i3d.to(device)
        return tuple(i3d_features(self.i3d, v.float(), self.args.i3d_size).numpy() for v in (video, recon))

    def rfvd(self, feats: list[tuple]) -> float | None:
        """Fréchet distance of all data-parallel ranks' real vs reconstructed features (collective; the
        value on global rank 0, None elsewhere)."""
        from megavg.eval.frechet import frechet_distance

        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, feats)
        sp = dist.get_world_size() // state.get_data_parallel_world_size()
        mine = [pair for part in parts[::sp] for pair in part]  # global rank r holds SP rank r % sp
        if dist.get_rank() != 0:
            return None
        real, recon = (np.concatenate([pair[i] for pair in mine]) for i in (0, 1))
        return frechet_distance(real, recon)
