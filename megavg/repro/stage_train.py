"""Training stages: the base DiT on teacher latents, then the arms on the deep-compression latents.

Arms (docs/reproduction.md): ``adapt`` = AE-Adapt-V (phase 1 align -> phase 2 head -> phase 3 LoRA,
merged at consolidation); ``noalign`` = phases 2 and 3 from the student's random embedder; ``scratch`` =
the student architecture from a random init, trained to ``scratch_factor`` times the adapted arm's FLOPs
(checkpoints along the way give its curve, the same-budget point included).
"""

from __future__ import annotations

from pathlib import Path

from megavg.repro import flops, launch
from megavg.repro.stages import Context, train_and_export


def latent_shards(ctx: Context, name: str) -> str:
    return str(ctx.dir(f"latents_{name}") / "part-*" / "*.tar")


def base(ctx: Context) -> dict:
    """The base DiT (patch 1x2x2) on the teacher autoencoder's latents, checkpoints for its curve."""
    s = ctx.sizes
    every = max(1, s.base_steps // s.curve_points)
    overrides = [f"data.shards={latent_shards(ctx, 'teacher')}", f"checkpoint.every={every}"]
    train_and_export(ctx, "base", "base_dit", s.base_steps, overrides)
    step_flops = flops.run_step_flops(ctx.dir("base") / "run", s)
    return {"steps": s.base_steps, "step_flops": step_flops, "checkpoint_every": every}


def make_student(ctx: Context, stage: str) -> Path:
    """``tools/make_student.py`` of the base model: patch 1, 32 channels in/out, new embedder, zero head."""
    out = ctx.dir(stage) / "student0"
    cmd = launch.python(
        str(launch.ROOT / "tools" / "make_student.py"),
        "--base",
        str(ctx.dir("base") / "model"),
        "--in-channels",
        "32",
        "--out-channels",
        "32",
        "--seed",
        "0",
        "--out",
        str(out),
    )
    launch.run(cmd, ctx.log(stage))
    return out


def phase(ctx: Context, stage: str, name: str, recipe: str, steps: int, init: Path, extra=()) -> Path:
    """One AE-Adapt-V phase run OUT/<stage>/<name>/ from model folder ``init``; returns its model folder."""
    s = ctx.sizes
    run_dir, model = ctx.dir(stage) / name / "run", ctx.dir(stage) / name / "model"
    overrides = [
        f"model.init={init}",
        f"data.shards={latent_shards(ctx, 'student')}",
        f"schedule.steps={steps}",
        f"checkpoint.every={max(1, steps // s.curve_points)}",
        *extra,
    ]
    launch.train(recipe, run_dir, overrides, ctx.log(stage))
    return launch.consolidate(run_dir, model, ctx.log(stage))


def adapt(ctx: Context, stage: str = "adapt", align: bool = True) -> dict:
    """AE-Adapt-V (``align`` False: without phase 1); returns each phase's steps and step FLOPs."""
    s = ctx.sizes
    phases = flops.adapt_phases(s, align)
    model = make_student(ctx, stage)
    if align:
        teacher = f"task.args.teacher={ctx.dir('base') / 'model'}"
        model = phase(ctx, stage, "align", "adapt_1_align", s.align_steps, model, [teacher])
    model = phase(ctx, stage, "head", "adapt_2_head", s.head_steps, model)
    phase(ctx, stage, "lora", "adapt_3_lora", s.lora_steps, model)
    return {"phases": phases, "flops": sum(p["steps"] * p["step_flops"] for p in phases.values())}


def scratch(ctx: Context) -> dict:
    """The student from scratch to ``scratch_factor`` x the adapted arm's FLOPs; a checkpoint at each
    multiple of that budget (the first one at the same budget)."""
    s = ctx.sizes
    budget = sum(p["steps"] * p["step_flops"] for p in flops.adapt_phases(s).values())
    step_flops = flops.config_step_flops("scratch", s)
    steps_at_budget = max(1, round(budget / step_flops))
    steps = steps_at_budget * s.scratch_factor
    overrides = [f"data.shards={latent_shards(ctx, 'student')}", f"checkpoint.every={steps_at_budget}"]
    train_and_export(ctx, "scratch", "scratch", steps, overrides)
    return {
        "steps": steps,
        "steps_at_adapt_budget": steps_at_budget,
        "step_flops": step_flops,
        "flops": steps * step_flops,
        "checkpoint_every": steps_at_budget,
    }
