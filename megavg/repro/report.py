"""The reproduction's report: ``reproduction.json``, the quality-vs-FLOPs plot and the sample grid (PNG).

The page itself (docs/reproduction.md) is rendered by :mod:`megavg.repro.page` from the JSON.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import yaml

from megavg.eval.inputs import VideoRef, read_video
from megavg.repro.evaluate import latency, real_floor
from megavg.repro.stages import Context

ARM_LABELS = {
    "base": "base (f8t4, patch 2)",
    "adapt": "AE-Adapt-V",
    "noalign": "AE-Adapt-V without phase 1",
    "scratch_same_budget": "from scratch, same FLOPs",
    "scratch_cap": "from scratch, cap",
}
CURVE_LABELS = {
    "base": "base",
    "adapt": "AE-Adapt-V",
    "noalign": "without phase 1",
    "scratch": "from scratch",
}
EVALUATED = ("base", "adapt", "noalign", "scratch")  # arms with an eval_<arm> stage
FVD_MARGIN, ACC_MARGIN = 1.10, 0.05  # the goals: within 10% FVD, 5 points of accuracy


def reaches(arm: dict, base: dict) -> bool:
    """Whether a final model reaches the base model's quality within the goals' margins."""
    fvd_ok = arm["fvd"] <= FVD_MARGIN * base["fvd"]
    return fvd_ok and arm["prompt_accuracy"] >= base["prompt_accuracy"] - ACC_MARGIN


def ratios(arms: dict, curves: dict) -> dict:
    """The paper's three claims in miniature (quality, cost vs scratch, latency), measured."""
    base, adapt = arms["base"], arms["adapt"]
    target = base["prompt_accuracy"] - ACC_MARGIN
    first = next((p for p in curves["scratch"] if p["prompt_accuracy"] >= target), None)
    return {
        "fvd_adapt_over_base": adapt["fvd"] / base["fvd"],
        "accuracy_adapt_minus_base": adapt["prompt_accuracy"] - base["prompt_accuracy"],
        "adapt_reaches_base": reaches(adapt, base),
        "scratch_same_budget_reaches_base": reaches(arms["scratch_same_budget"], base),
        "scratch_cap_reaches_base": reaches(arms["scratch_cap"], base),
        "scratch_flops_to_base_accuracy": first["train_flops"] if first else None,
        "scratch_over_adapt_flops_to_base_accuracy": first["train_flops"] / adapt["train_flops"]
        if first
        else None,
        "latency_base_over_adapt": base["latency_s"] / adapt["latency_s"],
    }


def train_seconds(stage_dir: Path) -> float:
    """Seconds of optimizer steps of every training run under ``stage_dir`` (logged step times x the
    logging interval): unlike the stage's wall time, this includes runs that were interrupted and resumed."""
    total = 0.0
    for metrics in stage_dir.glob("**/metrics.jsonl"):
        every = yaml.safe_load((metrics.parent / "config.yaml").read_text())["logging"]["every"]
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        total += every * sum(r.get("perf/step_time_s", 0.0) for r in rows)
    return total


def stage_records(ctx: Context, names: list[str]) -> dict:
    """Wall time, load average and (training stages) step seconds of every finished stage."""
    records = {}
    for n in names:
        keep = ("wall_s", "loadavg_before", "loadavg_after")
        records[n] = {k: v for k, v in (ctx.done(n) or {}).items() if k in keep}
        if records[n]:
            records[n]["train_s"] = train_seconds(ctx.dir(n))
    return records


def plot_curves(curves: dict, arms: dict, path: Path) -> None:
    """Prompt accuracy (curves: intermediate checkpoints) and FVD (final models) vs training FLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arm, rows in curves.items():
        if rows:
            x = [r["train_flops"] for r in rows]
            axes[0].plot(x, [r["prompt_accuracy"] for r in rows], marker="o", label=CURVE_LABELS[arm])
    for name, r in arms.items():
        spread = [max(r["fvd_per_seed"]) - r["fvd"], r["fvd"] - min(r["fvd_per_seed"])]
        yerr = [[max(0.0, spread[1])], [max(0.0, spread[0])]]
        axes[1].errorbar(
            [r["train_flops"]], [r["fvd"]], yerr=yerr, marker="o", capsize=3, label=ARM_LABELS[name]
        )
    labels = ("prompt accuracy (held-out captions)", "FVD, final models (bars: per-seed range)")
    for ax, ylabel in zip(axes, labels):
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (megavg counter)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def grid_rows(heldout: Path, eval_dir: Path, arms: list[str], videos: int) -> tuple[list[str], dict]:
    """The first ``videos`` held-out prompts, and per grid row the video of each prompt: a held-out clip
    with that caption (the real row), then each arm's first video of it (seed 0, from its manifest)."""
    prompts = (heldout / "prompts.txt").read_text().splitlines()[:videos]
    listing = [json.loads(line) for line in (heldout / "list.jsonl").read_text().splitlines()]
    clip_of = {}
    for row in listing:
        clip_of.setdefault(row["caption"], heldout / row["path"])
    rows = {"real (held-out clip, same caption)": [clip_of[p] for p in prompts]}
    for arm in arms:
        folder = eval_dir / arm / "seed0"
        manifest = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
        video_of = {(r["prompt"], r["index"]): folder / r["file"] for r in manifest}
        rows[ARM_LABELS[arm]] = [video_of[(p, 0)] for p in prompts]
    return prompts, rows


def sample_grid(ctx: Context, arms: list[str], path: Path, videos: int = 4, frames: int = 4) -> None:
    """Columns = the first ``videos`` held-out prompts; rows = a real clip of each caption, then the arms
    (seed 0); each cell ``frames`` evenly spaced frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompts, rows = grid_rows(ctx.dir("world") / "heldout", ctx.dir("eval"), arms, videos)
    fig, axes = plt.subplots(len(rows), videos, figsize=(videos * frames * 0.9, len(rows) * 1.0 + 0.3))
    for row, (label, files) in enumerate(rows.items()):
        for col, file in enumerate(files):
            clip = read_video(VideoRef(file.stem, file))  # 3, T, H, W in [-1, 1]
            pick = np.linspace(0, clip.shape[1] - 1, frames).round().astype(int)
            strip = ((clip[:, pick] + 1) * 127.5).clamp(0, 255).byte().permute(2, 1, 3, 0)  # H, f, W, 3
            axes[row, col].imshow(strip.reshape(strip.shape[0], -1, 3).numpy())
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", fontsize=7)
    for col, prompt in enumerate(prompts):
        axes[0, col].set_title(prompt, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def autoencoder_record(ctx: Context, stage: str) -> dict:
    """Latent shape, scaling factor, steps and held-out PSNR, after the decoder-only steps too."""
    record = {k: ctx.done(stage)[k] for k in ("latent_shape", "scaling_factor", "heldout_psnr_db", "steps")}
    decoder = ctx.done(f"decoder_{stage}")
    record |= {"decoder_steps": decoder["steps"], "decoder_heldout_psnr_db": decoder["heldout_psnr_db"]}
    return record


def collect(ctx: Context, stage_names: list[str]) -> dict:
    """reproduction.json's content from the finished stages."""
    arms, curves = {}, {}
    for arm in EVALUATED:
        done = ctx.done(f"eval_{arm}")
        arms |= done["finals"]
        curves[arm] = done["curve"]
    for name, r in arms.items():
        r["fvd_spread"] = max(r["fvd_per_seed"]) - min(r["fvd_per_seed"])
        # latency again, one model after the other in this process: the evaluations ran concurrently
        r["latency_s"] = latency(ctx, ctx.dir("eval") / name / "pipeline", ctx.dir("eval") / name)
    stages = stage_records(ctx, stage_names)
    return {
        "command": "bash tools/reproduce.sh" + (" --smoke" if ctx.smoke else ""),
        "sizes": dataclasses.asdict(ctx.sizes),
        "autoencoders": {n: autoencoder_record(ctx, n) for n in ("ae_teacher", "ae_student")},
        "arms": arms,
        "curves": curves,
        "ratios": ratios(arms, curves),
        "fvd_real_train_clips": real_floor(ctx),
        "stages": stages,
        "total_wall_s": sum(r.get("wall_s", 0.0) for r in stages.values()),
        "total_train_s": sum(r.get("train_s", 0.0) for r in stages.values()),
    }


def report(ctx: Context, stage_names: list[str], notes: str) -> dict:
    """Write the JSON, the two PNGs and the page: into the checkout (full run) or OUT/report (smoke)."""
    from megavg.repro.launch import ROOT
    from megavg.repro.page import render

    root = ctx.dir("report") if ctx.smoke else ROOT
    data = collect(ctx, stage_names)
    images = root / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    plot_curves(data["curves"], data["arms"], images / "reproduction_curves.png")
    sample_grid(ctx, list(data["arms"]), images / "reproduction_samples.png")
    write_json(root / "benchmarks" / "results" / "reproduction.json", data)
    (root / "docs" / "reproduction.md").write_text(render(data, notes))
    return {"written": str(root)}
