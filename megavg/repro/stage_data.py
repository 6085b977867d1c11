"""Data-side stages: the world's shards, the text encoder, the two autoencoders, the latent shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import megavg.models
from megavg.repro import autoencoder, launch
from megavg.repro.data import write_split
from megavg.repro.stages import Context, train_and_export
from megavg.repro.text import build_text_encoder
from megavg.repro.world import render, split_scenes

SEED = 0
MEASURE_CLIPS = 16  # clips for the scaling factor (train split) and the PSNR (held-out split)


def world(ctx: Context) -> dict:
    """Train and held-out splits as MP4 files and video shards."""
    s, out = ctx.sizes, ctx.dir("world")
    train = split_scenes("train", s.train_clips, SEED)
    heldout = split_scenes("heldout", s.heldout_clips, SEED + 1)
    write_split(out / "train", train, s.frames, s.size)
    write_split(out / "heldout", heldout, s.frames, s.size)
    captions = sorted({sc.caption for sc in heldout})  # each held-out caption once: the generation prompts
    (out / "heldout" / "prompts.txt").write_text("".join(c + "\n" for c in captions))
    return {
        "train_clips": len(train),
        "heldout_clips": len(heldout),
        "heldout_captions": len({sc.caption for sc in heldout}),
    }


def text(ctx: Context) -> dict:
    build_text_encoder(ctx.dir("text") / "encoder", dim=ctx.sizes.text_dim, seed=SEED)
    return {"text_dim": ctx.sizes.text_dim}


def sample_clips(ctx: Context, split: str, count: int, seed: int) -> list[np.ndarray]:
    return [render(sc, ctx.sizes.frames, ctx.sizes.size) for sc in split_scenes(split, count, seed)]


def train_autoencoder(ctx: Context, stage: str) -> dict:
    """Train one DC-AE-V, write its measured scaling factor, report its held-out PSNR."""
    shards = ctx.dir("world") / "train" / "shards"
    steps = ctx.sizes.teacher_ae_steps if stage == "ae_teacher" else ctx.sizes.student_ae_steps
    folder = train_and_export(ctx, stage, stage, steps, [f"data.shards={shards}"])
    scale = write_scale(ctx, folder, stage)
    model = megavg.models.load(folder).eval()
    count = min(MEASURE_CLIPS, ctx.sizes.heldout_clips)
    psnr = autoencoder.heldout_psnr(model, sample_clips(ctx, "heldout", count, SEED + 1))
    shape = list(model.encode(autoencoder.to_model(sample_clips(ctx, "train", 1, SEED)[0])).shape[1:])
    return {
        "scaling_factor": scale,
        "heldout_psnr_db": psnr,
        "latent_shape": shape,
        "steps": steps,
    }


def finetune_decoder(ctx: Context, stage: str) -> dict:
    """Train only the decoder of an autoencoder stage's model further (``model.trainable``), so the
    latent space the DiTs learn stays fixed while the pictures improve; reports the new held-out PSNR."""
    shards = ctx.dir("world") / "train" / "shards"
    overrides = [
        f"model.init={ctx.dir(stage) / 'model'}",
        'model.trainable=["decoder.*"]',
        f"data.shards={shards}",
    ]
    steps = ctx.sizes.teacher_decoder_steps if stage == "ae_teacher" else ctx.sizes.student_decoder_steps
    folder = train_and_export(ctx, f"decoder_{stage}", stage, steps, overrides)
    model = megavg.models.load(folder).eval()
    scale = ctx.done(stage)["scaling_factor"]
    if abs(model.args.scaling_factor - scale) > 1e-6 * scale:  # the encoder, hence the scale, is unchanged
        autoencoder.write_scaling(folder, scale)
    count = min(MEASURE_CLIPS, ctx.sizes.heldout_clips)
    psnr = autoencoder.heldout_psnr(model, sample_clips(ctx, "heldout", count, SEED + 1))
    return {"heldout_psnr_db": psnr, "steps": steps}


def write_scale(ctx: Context, folder: Path, stage: str) -> float:
    """``python -m megavg.infer.scaling FOLDER --write`` on the training shards; returns the factor."""
    cmd = launch.python(
        "-m", "megavg.infer.scaling", str(folder), "--shards", str(ctx.dir("world") / "train" / "shards"),
        "--frames", str(ctx.sizes.frames), "--size", str(ctx.sizes.size), str(ctx.sizes.size),
        "--clips", str(MEASURE_CLIPS), "--device", "cpu", "--write",
    )  # fmt: skip
    launch.run(cmd, ctx.log(stage))
    return float(json.loads((folder / "config.json").read_text())["args"]["scaling_factor"])


def precompute(ctx: Context, vae_stage: str, split: str, out_name: str, teacher: str | None = None) -> None:
    """``python -m megavg.infer.precompute`` of one split with one autoencoder (and a teacher's latents)."""
    s = ctx.sizes
    cmd = launch.python(
        "-m",
        "megavg.infer.precompute",
        "--vae",
        str(ctx.dir(vae_stage) / "model"),
        "--shards",
        str(ctx.dir("world") / split / "shards"),
        "--text-encoder",
        str(ctx.dir("text") / "encoder"),
        "--frames",
        str(s.frames),
        "--size",
        str(s.size),
        str(s.size),
        "--out",
        str(ctx.dir(f"latents_{out_name}")),
        "--device",
        "cpu",
        "--samples-per-shard",
        str(max(1, s.train_clips // 8)),  # enough shards for every rank
        "--overwrite",
    )
    if teacher:
        cmd += ["--teacher-vae", str(ctx.dir(teacher) / "model")]
    launch.run(cmd, ctx.log(f"latents_{out_name}"), env={"HF_HUB_OFFLINE": "1"})


def teacher_latents(ctx: Context) -> dict:
    """The base model's training data: the train split in the teacher autoencoder's latents."""
    precompute(ctx, "ae_teacher", "train", "teacher")
    return {}


def student_latents(ctx: Context) -> dict:
    """The arms' training data: the train split in the student's latents, with the teacher's (phase 1)."""
    precompute(ctx, "ae_student", "train", "student", teacher="ae_teacher")
    return {}
