"""Evaluation stages: every arm's final model (FVD with seeds, prompt accuracy, latency) and its curve.

Curve points are intermediate checkpoints consolidated by tag (``tools/consolidate.py --tag``), each at
its cumulative training FLOPs: an adaptation phase's points add the FLOPs of the phases before it.
"""

from __future__ import annotations

from pathlib import Path

from megavg.repro import launch
from megavg.repro.evaluate import evaluate_point
from megavg.repro.stages import Context

TEACHER_VAE, STUDENT_VAE = "decoder_ae_teacher", "decoder_ae_student"  # stages holding the decoders used
ARM_VAE = {"base": TEACHER_VAE, "adapt": STUDENT_VAE, "noalign": STUDENT_VAE, "scratch": STUDENT_VAE}


def per_prompt(ctx: Context, videos: int) -> int:
    prompts = len((ctx.dir("world") / "heldout" / "prompts.txt").read_text().splitlines())
    return max(1, round(videos / prompts))


def tag_model(ctx: Context, run_dir: Path, tag: str, out: Path) -> Path:
    """The model folder of checkpoint ``tag`` of a run (consolidated once)."""
    if not (out / "config.json").is_file():
        launch.consolidate(run_dir, out, ctx.log("eval"), tag=tag)
    return out


def run_points(ctx: Context, arm: str) -> list[tuple[str, Path, Path, float]]:
    """(name, run dir, tag, cumulative FLOPs) of an arm's intermediate checkpoints."""
    if arm in ("base", "scratch"):
        done = ctx.done(arm)
        every = done.get("checkpoint_every", done["steps"])
        return [
            (f"{arm}-{step}", ctx.dir(arm) / "run", tag, step * done["step_flops"])
            for step, tag in launch.tags(ctx.dir(arm) / "run")
            if step % every == 0  # the run's own checkpoints (not ones left by an interruption)
        ]
    points, offset = [], 0.0
    for name, phase in ctx.done(arm)["phases"].items():
        run_dir = ctx.dir(arm) / name / "run"
        if name != "align":  # an aligned student's head is still zero: nothing to sample
            every = max(1, phase["steps"] // ctx.sizes.curve_points)
            points += [
                (f"{arm}-{name}-{step}", run_dir, tag, offset + step * phase["step_flops"])
                for step, tag in launch.tags(run_dir)
                if step % every == 0
            ]
        offset += phase["steps"] * phase["step_flops"]
    return points


def curve(ctx: Context, arm: str) -> list[dict]:
    """Prompt accuracy (``curve_videos`` videos, one seed) at each intermediate checkpoint."""
    rows = []
    for name, run_dir, tag, flops in run_points(ctx, arm):
        model = tag_model(ctx, run_dir, tag, ctx.dir("eval") / "models" / name)
        result = evaluate_point(ctx, name, model, ARM_VAE[arm], per_prompt(ctx, ctx.sizes.curve_videos), [0])
        rows.append(
            {
                "point": name,
                "train_flops": flops,
                "prompt_accuracy": result["prompt_accuracy"],
            }
        )
    return rows


def final_models(ctx: Context, arm: str) -> dict[str, tuple[Path, str, float]]:
    """Compared model name -> (model folder, autoencoder stage, training FLOPs) of one arm (the
    from-scratch arm gives two: at the adapted arm's FLOPs and at its cap)."""
    done = ctx.done(arm)
    if arm == "base":
        return {"base": (ctx.dir("base") / "model", TEACHER_VAE, done["steps"] * done["step_flops"])}
    if arm in ("adapt", "noalign"):
        return {arm: (ctx.dir(arm) / "lora" / "model", STUDENT_VAE, done["flops"])}
    step, tag = next(
        (s, t) for s, t in launch.tags(ctx.dir(arm) / "run") if s >= done["steps_at_adapt_budget"]
    )
    budget = tag_model(ctx, ctx.dir(arm) / "run", tag, ctx.dir("eval") / "models" / "scratch-budget")
    return {
        "scratch_same_budget": (budget, STUDENT_VAE, step * done["step_flops"]),
        "scratch_cap": (ctx.dir(arm) / "model", STUDENT_VAE, done["flops"]),
    }


def evaluate_arm(ctx: Context, arm: str) -> dict:
    """One arm's final scores (all seeds, latency) and its curve."""
    s = ctx.sizes
    finals = {}
    for name, (model, vae, flops) in final_models(ctx, arm).items():
        videos = per_prompt(ctx, s.eval_videos)
        result = evaluate_point(ctx, name, model, vae, videos, list(range(s.seeds)), final=True)
        finals[name] = {"train_flops": flops, **result}
    return {"finals": finals, "curve": curve(ctx, arm)}
