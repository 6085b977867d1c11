"""``fvd REAL FAKE --i3d WEIGHTS``: Fréchet Video Distance between two folders of videos."""

from __future__ import annotations

import argparse

import numpy as np

from megavg.eval import ranks
from megavg.eval.frechet import frechet_distance
from megavg.eval.i3d import RANDOM, i3d_features, load_i3d
from megavg.eval.inputs import VideoRef, list_videos, read_video
from megavg.utils.errors import UserError

RANDOM_NOTE = "random I3D (--i3d random): the score means nothing (tests and smoke runs only)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("real", help="folder of real videos (files or video shards)")
    p.add_argument("fake", help="folder of generated videos (files or video shards)")
    p.add_argument("--i3d", required=True,
                   help="I3D weights: pytorch-i3d state dict (rgb_imagenet.pt), TorchScript "
                        "i3d_torchscript.pt, or 'random'")  # fmt: skip
    p.add_argument("--frames", type=int, default=16, help="first frames of each video fed to I3D (16)")
    p.add_argument("--resize", type=int, default=224,
                   help="I3D input size (224 for real FVD; smaller only for smoke runs)")  # fmt: skip
    p.add_argument("--batch", type=int, default=8, help="videos per I3D forward")


def folder_features(refs: list[VideoRef], model, frames: int, size: int, batch: int) -> np.ndarray:
    """[N, 400] float64 I3D features of ``refs`` (this rank's share computed here, all ranks' gathered)."""
    mine = ranks.share(refs)
    feats = []
    for start in range(0, len(mine), batch):
        clips = [read_video(refs[i], frames) for i in mine[start : start + batch]]
        feats += list(i3d_features(model, clips, size).numpy())
    return np.stack(ranks.gather(mine, feats))


def run(args: argparse.Namespace) -> dict:
    if args.frames < 1 or args.resize < 16 or args.batch < 1:
        raise UserError("fvd: --frames and --batch must be >= 1, --resize >= 16")
    real, fake = list_videos(args.real), list_videos(args.fake)
    for folder, refs in ((args.real, real), (args.fake, fake)):
        if len(refs) < 2:
            for ref in refs:  # a file that is no video says so by name, not as a short count
                read_video(ref, 1)
            raise UserError(f"{folder}: FVD needs at least 2 videos, found {len(refs)}")
    model = load_i3d(args.i3d).to(ranks.device())
    feats = [folder_features(r, model, args.frames, args.resize, args.batch) for r in (real, fake)]
    result = {
        "fvd": frechet_distance(*feats),
        "real_videos": len(real),
        "fake_videos": len(fake),
        "frames": args.frames,
        "resize": args.resize,
        "features": "I3D Kinetics-400 logits (400-d, pre-softmax, averaged over time)",
        "i3d": args.i3d,
    }
    notes = [RANDOM_NOTE] if args.i3d == RANDOM else []
    if args.resize != 224:
        notes.append(f"--resize {args.resize}: not comparable with FVD at 224x224")
    if notes:
        result["note"] = "; ".join(notes)
    return result


def table(result: dict) -> str:
    lines = [f"FVD {result['fvd']:.4f}  ({result['real_videos']} real, {result['fake_videos']} fake videos, "
             f"{result['frames']} frames at {result['resize']}x{result['resize']})"]  # fmt: skip
    if "note" in result:
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)
