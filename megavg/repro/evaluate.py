"""Evaluate one DiT checkpoint of the reproduction: export, generate held-out captions, score.

    point = evaluate_point(ctx, "adapt", model_folder, vae_stage="ae_student", per_prompt=5, seeds=[0, 1])

Through the real commands: ``tools/export_pipeline.py`` (DiT + autoencoder + the world's text encoder),
``python -m megavg.eval generate`` over the held-out captions. Scores: prompt accuracy
(:mod:`megavg.repro.detector`) and FVD against the held-out real clips with megavg's I3D features
(:mod:`megavg.eval.fvd`, :func:`megavg.eval.frechet.frechet_distance`), one FVD per sampling seed and one
over all seeds together. Latency: :func:`megavg.infer.generate.run` on a few captions, seconds per video
(text encoding + denoising + decoding) at the same steps for every model.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import numpy as np
import torch

from megavg.eval.frechet import frechet_distance
from megavg.eval.fvd import folder_features
from megavg.eval.i3d import load_i3d
from megavg.eval.inputs import list_videos, read_video
from megavg.repro import launch
from megavg.repro.detector import prompt_accuracy
from megavg.repro.stages import Context

SHIFT, GUIDANCE = 2.0, 4.0  # sampling: the training shift, CFG scale (the same for every arm)
I3D_FRAMES, I3D_BATCH = 16, 8
_I3D: dict[str, torch.nn.Module] = {}


def i3d_resize(ctx: Context) -> int:
    return 224 if not ctx.smoke else 32  # real FVD protocol; smoke runs use a random I3D at small size


def features(ctx: Context, folder: Path, limit: int | None = None) -> np.ndarray:
    """[N, 400] I3D features of the (first ``limit``) videos in ``folder`` (cached next to it)."""
    cache = folder.parent / f"{folder.name}.features.npy"
    if cache.is_file():
        return np.load(cache)
    spec = ctx.sizes.i3d
    if spec not in _I3D:
        _I3D[spec] = load_i3d(spec)
    refs = list_videos(str(folder))[:limit]
    feats = folder_features(refs, _I3D[spec], I3D_FRAMES, i3d_resize(ctx), I3D_BATCH)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")  # concurrent evaluations may race to write it
    np.save(tmp, feats)
    tmp.replace(cache)
    return feats


def export(ctx: Context, model: Path, vae_stage: str, out: Path) -> Path:
    """``tools/export_pipeline.py`` for a DiT folder with an autoencoder stage's model."""
    cmd = launch.python(
        str(launch.ROOT / "tools" / "export_pipeline.py"),
        "--transformer",
        str(model),
        "--vae",
        str(ctx.dir(vae_stage) / "model"),
        "--text-encoder",
        str(ctx.dir("text") / "encoder"),
        "--solver",
        "unipc",
        "--shift",
        str(SHIFT),
        "--steps",
        str(ctx.sizes.sample_steps),
        "--guidance",
        str(GUIDANCE),
        "--out",
        str(out),
    )
    launch.run(cmd, ctx.log("eval"))
    return out


def video_args(ctx: Context) -> list[str]:
    """``generate``'s video options of every evaluation: the world's size and length, fp32 on the CPU."""
    s = ctx.sizes
    return [
        "--size",
        str(s.size),
        str(s.size),
        "--frames",
        str(s.frames),
        "--dtype",
        "fp32",
        "--device",
        "cpu",
    ]


def generate(ctx: Context, pipe: Path, out: Path, per_prompt: int, seed: int) -> Path:
    """``python -m megavg.eval generate`` of every held-out caption ``per_prompt`` times from ``seed``."""
    if (out / "manifest.jsonl").is_file():
        return out
    cmd = launch.python(
        "-m",
        "megavg.eval",
        "generate",
        str(pipe),
        "--prompts",
        str(ctx.dir("world") / "heldout" / "prompts.txt"),
        "--per-prompt",
        str(per_prompt),
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--",
        *video_args(ctx),
    )
    launch.run(cmd, ctx.log("eval"), env={"HF_HUB_OFFLINE": "1"})
    return out


def accuracy(folder: Path) -> dict[str, float]:
    """Prompt accuracy of a generated folder (captions from its manifest)."""
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    refs = {ref.name: ref for ref in list_videos(str(folder))}
    videos = []
    for row in rows:
        clip = read_video(refs[Path(row["file"]).stem])  # 3, T, H, W in [-1, 1]
        videos.append(((clip + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy())
    return prompt_accuracy(videos, [row["prompt"] for row in rows])


def latency(ctx: Context, pipe: Path, out: Path, count: int = 3) -> float:
    """Median seconds per video of :func:`megavg.infer.generate.run` (all its stages)."""
    from megavg.infer import generate as runner

    prompts = (ctx.dir("world") / "heldout" / "prompts.txt").read_text().splitlines()[:count]
    times = []
    for i, prompt in enumerate(prompts):
        args = runner.parse_args(
            [
                str(pipe),
                "--prompt",
                prompt,
                "--out",
                str(out / f"latency{i}.mp4"),
                *video_args(ctx),
                "--no-progress",
            ]
        )
        result = runner.run(args)
        times.append(sum(row[1] for row in result["stages"]))
    return statistics.median(times)


def evaluate_point(
    ctx: Context,
    name: str,
    model: Path,
    vae_stage: str,
    per_prompt: int,
    seeds: list[int],
    final: bool = False,
) -> dict:
    """Export, generate per seed, score; cached in OUT/eval/<name>/result.json. ``final``: also FVD (per
    seed and over all seeds) and latency; otherwise prompt accuracy only (curve points)."""
    folder = ctx.dir("eval") / name
    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    pipe = export(ctx, model, vae_stage, folder / "pipeline")
    sets = [generate(ctx, pipe, folder / f"seed{seed}", per_prompt, seed * 100003) for seed in seeds]
    accs = [accuracy(s) for s in sets]
    result = {
        "prompt_accuracy": float(np.mean([a["both"] for a in accs])),
        "accuracy_per_seed": accs,
        "videos": sum(len((s / "manifest.jsonl").read_text().splitlines()) for s in sets),
    }
    if final:
        real = features(ctx, ctx.dir("world") / "heldout" / "clips", ctx.sizes.fvd_reference)
        feats = [features(ctx, s) for s in sets]
        result["fvd"] = frechet_distance(real, np.concatenate(feats))
        result["fvd_per_seed"] = [frechet_distance(real, f) for f in feats]
        result["latency_s"] = latency(ctx, pipe, folder)
    done.write_text(json.dumps(result, indent=1) + "\n")
    return result


def real_floor(ctx: Context) -> float:
    """FVD of real training clips (as many as one final model's videos) against the held-out reference:
    what a perfect generator scores at this sample size (FVD on few videos is biased upwards)."""
    count = ctx.sizes.seeds * ctx.sizes.eval_videos
    real = features(ctx, ctx.dir("world") / "heldout" / "clips", ctx.sizes.fvd_reference)
    return frechet_distance(real, features(ctx, ctx.dir("world") / "train" / "clips", count))
