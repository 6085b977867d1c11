"""``recon REAL FAKE``: PSNR / SSIM (and LPIPS with VGG weights) of reconstructions, matched by name.

Each FAKE video is compared with the REAL video of the same name (file stem or shard key; extensions may
differ). Both must have the same frame size; they are compared over their first ``--frames`` frames
(default: all, which must then be equally many). The metrics are megavg's
(:mod:`megavg.metrics.video`, :mod:`megavg.metrics.perceptual`), per video, then averaged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from megavg.eval import ranks
from megavg.eval.inputs import list_videos, read_video
from megavg.metrics import video as video_metrics
from megavg.utils.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("real", help="folder of reference videos (files or video shards)")
    p.add_argument("fake", help="folder of reconstructions, named as the references")
    p.add_argument("--frames", type=int, help="compare the first N frames (default: all)")
    p.add_argument("--lpips-vgg", default="",
                   help="VGG16 weights (torchvision names): adds LPIPS; 'random' for smoke runs")  # fmt: skip
    p.add_argument("--lpips-lin", default="", help="optional lpips-package linear-layer weights")


def pairs(real_dir: str, fake_dir: str) -> list[tuple]:
    """(real, fake) VideoRefs matched by name; a name missing on either side is a UserError."""
    real = {r.name: r for r in list_videos(real_dir)}
    fake = {r.name: r for r in list_videos(fake_dir)}
    for here, there, folder in ((real, fake, fake_dir), (fake, real, real_dir)):
        missing = sorted(here.keys() - there.keys())
        if missing:
            raise UserError(f"{folder}: no video named {missing[0]!r} ({len(missing)} unmatched names)")
    return [(real[n], fake[n]) for n in sorted(real)]


def compare(real, fake, frames: int | None, lpips) -> dict:
    """Metrics of one pair (videos read here)."""
    a, b = read_video(real, frames), read_video(fake, frames)
    if a.shape != b.shape:
        raise UserError(f"{fake.path}: {fake.name} is 3x{tuple(b.shape[1:])} (TxHxW), its reference "
                        f"{tuple(a.shape[1:])}; use --frames to compare fewer frames")  # fmt: skip
    a, b = a[None], b[None]  # 1,3,T,H,W
    out = {"psnr": video_metrics.psnr(b, a).item(), "ssim": video_metrics.ssim(b, a).item()}
    if lpips is not None:
        from megavg.metrics.perceptual import video_distance

        with torch.no_grad():
            out["lpips"] = video_distance(lpips, b.to(lpips.shift.device), a.to(lpips.shift.device)).item()
    return out


def run(args: argparse.Namespace) -> dict:
    if args.frames is not None and args.frames < 1:
        raise UserError(f"recon: --frames {args.frames}: must be >= 1")
    matched = pairs(args.real, args.fake)
    lpips = None
    if args.lpips_vgg:
        from megavg.metrics.perceptual import RANDOM, build_lpips

        for flag, path in (("--lpips-vgg", args.lpips_vgg), ("--lpips-lin", args.lpips_lin)):
            if path and path != RANDOM and not Path(path).is_file():
                raise UserError(f"{flag} {path}: no such weights file")
        lpips = build_lpips(args.lpips_vgg, args.lpips_lin).to(ranks.device()).eval()
    rows = ranks.shared(matched, lambda mine: [compare(*matched[i], args.frames, lpips) for i in mine])
    names = [real.name for real, _ in matched]
    result = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    result |= {"videos": len(rows), "per_video": dict(zip(names, rows, strict=True))}
    if args.lpips_vgg == "random":
        result["note"] = "random VGG16 (--lpips-vgg random): the LPIPS value means nothing"
    return result


def table(result: dict) -> str:
    keys = [k for k in ("psnr", "ssim", "lpips") if k in result]
    lines = [f"{'video':<32}" + "".join(f"{k:>10}" for k in keys)]
    for name, row in result["per_video"].items():
        lines.append(f"{name[:31]:<32}" + "".join(f"{row[k]:>10.4f}" for k in keys))
    lines.append(
        f"{'mean (' + str(result['videos']) + ' videos)':<32}" + "".join(f"{result[k]:>10.4f}" for k in keys)
    )
    if "note" in result:
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)
