"""Render docs/reproduction.md from ``reproduction.json`` (every number on the page comes from the run)."""

from __future__ import annotations

from megavg.repro.report import ARM_LABELS

INTRO = """# Reproduction: AE-Adapt-V in miniature, on CPU

```bash
bash tools/reproduce.sh            # the full run: writes this page, its images and the JSON below
bash tools/reproduce.sh --smoke    # every stage at toy size (mechanics only; slow test, in --all)
```

`tools/reproduce.sh` (`python -m megavg.repro`) runs the chain below on 2 CPU processes and writes this page,
`benchmarks/results/reproduction.json` and the two images from that run's own outputs. Stages are resumable:
a stage whose `runs/repro/<stage>/DONE.json` exists is skipped, and a stage writes it only after its outputs.

**The world** (`megavg/repro/world.py`): 64x64 clips of 16 frames; one object (square, circle or diamond, 26
px, in one of six colours) crossing half the frame left, right, up or down over a dark or light background;
caption "a red circle moves left on dark". Held-out split: other seeds and 24 of the 144 captions, never
shown in training; every metric uses held-out captions only, FVD against held-out real clips.
**Prompt accuracy** (`megavg/repro/detector.py`, no learned model): background = median border colour;
object = pixels far from it; colour = nearest palette colour of their median; direction = sign of the
larger slope of a straight line through the object's centroids over time. A video counts when both match
its caption. On real held-out clips it scores 100%, on the same clips with shuffled captions about chance
(`tests/repro/test_world_detector.py`).
**The chain**, every training run a `deepspeed` launch of `megavg.train` on 2 CPU ranks with a shipped config
plus the overrides in `configs/repro/`: two DC-AE-V autoencoders trained with `dcaev_1_recon.yaml`
(f8t4c16, the base model's space, like Wan-2.1's VAE; f16t4c32, the deeper compression), their scaling
factors measured (1 / std of the latents); `python -m megavg.infer.precompute` (the student's shards carry
the teacher's latents); the base Wan DiT (`wan-mini-t2v`: dim 128, 4 layers, patch 1x2x2) by flow matching
on the teacher's latents; then the arms on the f16t4c32 latents with patch 1: AE-Adapt-V
(`tools/make_student.py`, `adapt_1_align.yaml` -> `adapt_2_head.yaml` -> `adapt_3_lora.yaml`, the LoRA merged
by `tools/consolidate.py`), the same without phase 1, and the student architecture from scratch. Each model
is exported (`tools/export_pipeline.py`) and sampled with `python -m megavg.eval generate` (UniPC, 20 steps,
CFG 4, shift 2 for all); FVD uses megavg's I3D with the Kinetics-400 weights at 224x224 on 16 frames.
"""


def fmt_flops(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def arm_table(arms: dict) -> list[str]:
    lines = [
        "| arm | train FLOPs | FVD (all seeds) | FVD per seed | prompt accuracy | colour | direction "
        "| latency s/video |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in arms.items():
        seeds = ", ".join(f"{x:.1f}" for x in r["fvd_per_seed"])
        colour = sum(a["colour"] for a in r["accuracy_per_seed"]) / len(r["accuracy_per_seed"])
        direction = sum(a["direction"] for a in r["accuracy_per_seed"]) / len(r["accuracy_per_seed"])
        lines.append(
            f"| {ARM_LABELS[arm]} | {fmt_flops(r['train_flops'])} | {r['fvd']:.1f} | {seeds} | "
            f"{r['prompt_accuracy']:.3f} | {colour:.3f} | {direction:.3f} | {r['latency_s']:.3f} |"
        )
    return lines


def goals(data: dict) -> list[str]:
    r = data["ratios"]
    if r["scratch_flops_to_base_accuracy"] is None:
        cost = f"never within the cap ({data['sizes']['scratch_factor']}x the adapted FLOPs)"
    else:
        cost = (
            f"at {fmt_flops(r['scratch_flops_to_base_accuracy'])} FLOPs = "
            f"{r['scratch_over_adapt_flops_to_base_accuracy']:.2f}x the adapted arm's"
        )
    return [
        "| claim (issue goal) | measured |",
        "|---|---|",
        f"| adapted FVD within 10% of the base | adapted/base FVD = {r['fvd_adapt_over_base']:.2f} |",
        f"| prompt accuracy within 5 points of the base | {100 * r['accuracy_adapt_minus_base']:+.1f} pts |",
        f"| from scratch needs >= 5x the FLOPs to the base's accuracy | {cost} |",
        f"| from scratch at the same FLOPs / at the cap reaches the base (both margins) | "
        f"{r['scratch_same_budget_reaches_base']} / {r['scratch_cap_reaches_base']} |",
        f"| latency >= 3x lower at equal steps | base/adapted = {r['latency_base_over_adapt']:.2f}x |",
        "",
        f"FVD of {data['sizes']['seeds'] * data['sizes']['eval_videos']} real training clips against the"
        f" same reference (a perfect generator at this sample size): {data['fvd_real_train_clips']:.1f}.",
    ]


def stage_table(data: dict) -> list[str]:
    lines = [
        "| stage | wall s (last invocation) | step s (all invocations) | load avg before -> after |",
        "|---|---|---|---|",
    ]
    for name, rec in data["stages"].items():
        if rec:
            train = f"{rec['train_s']:.0f}" if rec.get("train_s") else ""
            load = f"{rec['loadavg_before'][0]:.1f} -> {rec['loadavg_after'][0]:.1f}"
            lines.append(f"| {name} | {rec['wall_s']:.0f} | {train} | {load} |")
    lines.append(f"| **total** | **{data['total_wall_s']:.0f}** | **{data['total_train_s']:.0f}** | |")
    return lines


def render(data: dict, notes: str) -> str:
    ae = data["autoencoders"]
    ae_lines = [
        "| autoencoder | latent (C, T, H, W) | scaling factor | steps | held-out PSNR dB "
        "| + decoder-only steps "
        "| held-out PSNR dB |",
        "|---|---|---|---|---|---|---|",
    ]
    ae_lines += [
        f"| {name} | {tuple(r['latent_shape'])} | {r['scaling_factor']:.4f} | {r['steps']} | "
        f"{r['heldout_psnr_db']:.2f} | {r['decoder_steps']} | {r['decoder_heldout_psnr_db']:.2f} |"
        for name, r in ae.items()
    ]
    parts = [
        INTRO,
        "## Results",
        "",
        *arm_table(data["arms"]),
        "",
        "![quality vs training FLOPs](images/reproduction_curves.png)",
        "",
        "![samples](images/reproduction_samples.png)",
        "",
        "Samples: one column per held-out prompt (the first four); the first row is a held-out clip with",
        "that caption, each other row an arm's video of it (sampling seed 0); four evenly spaced frames per",
        "video.",
        "",
        "## The paper's claims, measured here",
        "",
        *goals(data),
        "",
        "## Autoencoders",
        "",
        *ae_lines,
        "",
        "## Stages (wall time, machine load)",
        "",
        *stage_table(data),
        "",
        notes,
    ]
    return "\n".join(parts) + "\n"
