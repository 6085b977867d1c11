"""DC-AE-V learning rate vs latent scale, on the miniature reproduction's world (docs/recipes.md table).

One process, plain AdamW (no DeepSpeed), L1 + MSE as ``dcaev_recon``: prints every ``--every`` steps the
latents' std (unscaled), the PSNR of the reconstructions and the PSNR over the object's pixels only (the
part a background-only reconstruction misses). With ``--clips 1`` the model fits one training clip and is
scored on it (can the optimiser fit anything?); otherwise it trains on ``--clips`` training clips and is
scored on 8 held-out ones. Gradients are clipped to norm 1 (megavg.train's optimizer.grad_clip).

    OMP_NUM_THREADS=1 python benchmarks/ae_latent_scale.py --lr 1e-3 --clips 1 --steps 100
    OMP_NUM_THREADS=1 python benchmarks/ae_latent_scale.py --lr 1e-4 --clips 1 --steps 100
    OMP_NUM_THREADS=1 python benchmarks/ae_latent_scale.py --lr 1e-4 --clips 256 --batch 2 --steps 300

``--score FOLDER`` scores a trained model folder (e.g. the reproduction's ``runs/repro/ae_student/model``) on
the same 8 held-out clips instead of training one.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from megavg.metrics import video as video_metrics
from megavg.models import registry
from megavg.repro.autoencoder import to_model
from megavg.repro.world import render, split_scenes

FRAMES, SIZE = 16, 64


@torch.no_grad()
def scores(model, clips: list[torch.Tensor]) -> tuple[float, float, float]:
    """(latent std, PSNR dB, object-pixel PSNR dB) over ``clips``; values in [-1, 1] (peak-to-peak 2)."""
    stds, psnrs, objects = [], [], []
    for video in clips:
        z = model.encode(video)
        recon = model.decode(z).clamp(-1, 1)
        stds.append(float(z.std()))
        psnrs.append(float(video_metrics.psnr(recon, video).mean()))
        obj = (video - video[:, :, :, :1, :1]).abs().sum(1, keepdim=True) > 0.1  # differs from the corner
        err = ((recon - video) ** 2 * obj).sum() / (obj.sum() * 3)
        objects.append(float(10 * torch.log10(4 / err)))
    return float(np.mean(stds)), float(np.mean(psnrs)), float(np.mean(objects))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="dc-ae-v-mini-f16t4c32")
    p.add_argument("--lr", type=float)
    p.add_argument("--score", metavar="FOLDER", help="score this trained model folder instead of training")
    p.add_argument("--clips", type=int, default=256, help="training clips (1: fit one clip, scored on it)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    held = [to_model(render(s, FRAMES, SIZE)) for s in split_scenes("heldout", 16, 1)[:8]]
    if args.score:
        std, psnr, obj = scores(registry.load(args.score).eval(), held)
        print(f"{args.score}: latent std {std:.2f} | PSNR {psnr:.2f} dB | object PSNR {obj:.2f} dB")
        return
    if args.lr is None:
        p.error("--lr is required when training (no --score)")
    torch.manual_seed(args.seed)
    model = registry.build(args.preset)
    scenes = (
        split_scenes("train", 256, args.seed)[: args.clips]
        if args.clips <= 256
        else split_scenes("train", args.clips, args.seed)
    )
    train = [to_model(render(s, FRAMES, SIZE)) for s in scenes]
    scored = train if args.clips == 1 else held
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    print(f"{args.preset} lr {args.lr} clips {args.clips} batch {args.batch}; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| step | latent std | PSNR dB | object PSNR dB | s/step |\n|---|---|---|---|---|")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x = torch.cat([train[i] for i in rng.integers(0, len(train), args.batch)])
        recon = model(x)
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.every == 0 or step == 1:
            std, psnr, obj = scores(model, scored)
            per_step = (time.perf_counter() - start) / step
            print(f"| {step} | {std:.1f} | {psnr:.2f} | {obj:.2f} | {per_step:.2f} |", flush=True)


if __name__ == "__main__":
    main()
