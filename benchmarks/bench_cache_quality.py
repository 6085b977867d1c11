"""What step caching costs: speed-up and quality of cached vs uncached samples of a trained DiT.

    PYTHONPATH=. python benchmarks/train_cache_model.py --out runs/cache_model --steps 500   # ~20 min CPU
    PYTHONPATH=. python benchmarks/bench_cache_quality.py --model runs/cache_model/model

The model is ``wan-tiny-t2v`` trained with megavg's trainer on the shipped clips at 16x16 pixels, 8
frames (``train_cache_model.py``): 4 "captions", one per clip. For each caption (``--captions``) and
seed (``--seeds``) it samples with UniPC (``--steps``, CFG 5) uncached and with FBCache / TeaCache at
several thresholds, and prints per method and threshold: steps skipped, seconds per step (median over
interleaved runs), speed-up, and PSNR / SSIM of the cached sample's RGB channels against the uncached
one. A first table
shows the samples have learned something: PSNR of the uncached sample against the nearest training
window of its caption's clip, next to the same for pure noise. LPIPS needs VGG16 weights (``--vgg``,
``--lpips``; not shipped, never downloaded) and 64 px or larger frames to mean much; at 16 px it is
printed only when weights are given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cache_model import FRAMES, SIZE, captions, clip_latents  # noqa: E402

from megavg.infer.sampling import sample  # noqa: E402
from megavg.metrics.video import psnr, ssim  # noqa: E402
from megavg.models import load  # noqa: E402

SETTINGS = [("fbcache", t) for t in (0.05, 0.1, 0.2)] + [("teacache", t) for t in (0.2, 0.4, 0.8)]


def run(model, text, seed: int, steps: int, method: str = "none", threshold: float = 0.0):
    noise = torch.randn(1, 4, FRAMES, *SIZE, generator=torch.Generator().manual_seed(seed))
    stats: dict = {}
    out = sample(model, noise, text, steps=steps, guidance=5.0, shift=5.0, progress=False, cache=method,
                 cache_threshold=threshold, stats=stats)  # fmt: skip
    return out, stats


def learned(model, texts, steps: int) -> None:
    from megavg.data import real_clips

    print("\nDid it learn? PSNR (dB) of the uncached sample vs the nearest training window of its clip:\n")
    print("| clip | sample | noise |\n|---|---|---|")
    for i, clip in enumerate(real_clips()[: texts.shape[0]]):
        windows = torch.stack(clip_latents(clip))[:, :3]  # [N, 3, T, H, W]
        out, _ = run(model, texts[i : i + 1], 0, steps)
        noise = torch.randn_like(out).clamp(-1, 1)
        best = [psnr(x[:, :3].expand_as(windows), windows).max().item() for x in (out, noise)]
        print(f"| {clip.stem} | {best[0]:.1f} | {best[1]:.1f} |")


def measure(model, texts, steps: int, repeats: int, seeds: int, lpips) -> None:
    base_times, rows = (
        [],
        {s: {"times": [], "psnr": [], "ssim": [], "lpips": [], "skipped": []} for s in SETTINGS},
    )
    for _ in range(repeats):
        for i in range(texts.shape[0]):
            for seed in range(seeds):
                ref, stats = run(model, texts[i : i + 1], seed, steps)
                base_times.append(stats["step_s"])
                for method, threshold in SETTINGS:  # interleaved with the uncached runs
                    out, stats = run(model, texts[i : i + 1], seed, steps, method, threshold)
                    row = rows[(method, threshold)]
                    row["times"].append(stats["step_s"])
                    row["skipped"].append(stats["skipped"])
                    row["psnr"].append(psnr(out[:, :3], ref[:, :3].clamp(-1, 1)).item())
                    row["ssim"].append(
                        ssim(out[:, :3].clamp(-1, 1), ref[:, :3].clamp(-1, 1), size=7).mean().item()
                    )
                    if lpips is not None:
                        from megavg.metrics.perceptual import video_distance

                        row["lpips"].append(video_distance(lpips, out[:, :3].clamp(-1, 1), ref[:, :3]).item())
    base = statistics.median(base_times)
    runs = f"{texts.shape[0]} captions x {seeds} seeds x {repeats}"
    print(f"\nStep caching on the trained tiny DiT ({steps} UniPC steps, CFG 5 batched, 512 tokens, CPU "
          f"fp32; {runs}); uncached {base * 1e3:.1f} ms/step\n")  # fmt: skip
    print("| cache | threshold | steps skipped (mean) | ms/step | speed-up | PSNR dB | SSIM | LPIPS |")
    print("|---|---|---|---|---|---|---|---|")
    for (method, threshold), r in rows.items():
        t = statistics.median(r["times"])
        lp = f"{statistics.mean(r['lpips']):.4f}" if r["lpips"] else "n/a"
        skipped, quality = (
            statistics.mean(r["skipped"]),
            (statistics.mean(r["psnr"]), statistics.mean(r["ssim"])),
        )
        print(f"| {method} | {threshold:g} | {skipped:.1f} of {steps} | {t * 1e3:.1f} | {base / t:.2f}x | "
              f"{quality[0]:.1f} | {quality[1]:.3f} | {lp} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/cache_model/model")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--captions", type=int, default=4, help="how many of the 4 clips' captions")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--vgg", default="", help="VGG16 weights file for LPIPS (optional)")
    parser.add_argument("--lpips", default="", help="LPIPS linear-layer weights file (optional)")
    opts = parser.parse_args()
    model = load(opts.model).eval()
    texts = captions(4)[: opts.captions]
    lpips = None
    if opts.vgg:
        from megavg.metrics.perceptual import build_lpips

        lpips = build_lpips(opts.vgg, opts.lpips).eval()
    learned(model, texts, opts.steps)
    measure(model, texts, opts.steps, opts.repeats, opts.seeds, lpips)


if __name__ == "__main__":
    main()
