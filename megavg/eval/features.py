"""``features FOLDER --i3d WEIGHTS --out F.npz``: per-video I3D features, cached as an FVD reference.

The .npz holds ``features`` [N, 400] (float64, the FVD features of :mod:`megavg.eval.fvd`), ``names``
[N] (the videos' names, in the order of the rows), their ``mu`` [400] and ``sigma`` [400, 400], and the
protocol they were made with (``frames``, ``resize``, ``i3d``). ``fvd FAKE --ref-stats F.npz`` then
compares generated videos with it without decoding the real videos again (as StyleGAN-V caches the
statistics of real data); it refuses a file made with another protocol.
"""

from __future__ import annotations

import argparse

from megavg.eval import ranks
from megavg.eval.fvd import (
    FEATURES,
    add_i3d_arguments,
    check_i3d_args,
    folder_features,
    notes,
    protocol,
    write_reference,
)
from megavg.eval.i3d import load_i3d
from megavg.eval.inputs import list_videos
from megavg.utils.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="folder of videos (files or video shards)")
    add_i3d_arguments(p)
    p.add_argument("--out", required=True, help="the .npz file to write")


def run(args: argparse.Namespace) -> dict:
    check_i3d_args(args, "features")
    if not args.out.endswith(".npz"):
        raise UserError(f"features: --out {args.out}: must end in .npz")
    refs = list_videos(args.folder)
    if len(refs) < 2:
        raise UserError(f"{args.folder}: reference statistics need at least 2 videos, found {len(refs)}")
    model = load_i3d(args.i3d).to(ranks.device())
    feats = folder_features(refs, model, args.frames, args.resize, args.batch)
    ranks.on_rank0(lambda: write_reference(args.out, feats, [r.name for r in refs], protocol(args)))
    result = {"videos": len(refs), "out": args.out, "features": FEATURES} | protocol(args)
    return result | notes(args)


def table(result: dict) -> str:
    r = result
    made = f"{r['frames']} frames at {r['resize']}x{r['resize']}, {r['i3d']}"
    line = f"wrote I3D features of {r['videos']} videos ({made}) to {r['out']}"
    return line + (f"\nnote: {r['note']}" if "note" in r else "")
