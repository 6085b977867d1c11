"""How big each stage of the reproduction is: the full run (about 90 minutes on 2 cores) and the smoke run."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Clip geometry, split sizes, training steps per stage and evaluation sizes."""

    frames: int = 16
    size: int = 64
    train_clips: int = 1024
    heldout_clips: int = 256
    fvd_reference: int = 128  # held-out real clips whose I3D statistics FVD compares against
    teacher_ae_steps: int = 700  # at lr 1e-4 (1e-3 let the latents run away: notes.md)
    student_ae_steps: int = 700
    teacher_decoder_steps: int = 100  # decoder-only training after each autoencoder (encoder frozen)
    student_decoder_steps: int = 100
    base_steps: int = 2500
    align_steps: int = 50
    head_steps: int = 100
    lora_steps: int = 150
    scratch_factor: int = 4  # the from-scratch student trains to this multiple of the adapted budget
    curve_points: int = 2  # checkpoints per training run evaluated for the curves
    eval_videos: int = 24  # generated videos per arm and seed (one per held-out caption)
    curve_videos: int = 24  # per intermediate checkpoint (one per held-out caption; no FVD: prompt accuracy)
    seeds: int = 2  # sampling seeds for the FVD spread
    sample_steps: int = 20
    i3d: str = "kinetics400"
    text_dim: int = 32


FULL = Sizes()
SMOKE = Sizes(
    train_clips=48,
    heldout_clips=16,
    teacher_ae_steps=2,
    student_ae_steps=2,
    teacher_decoder_steps=2,
    student_decoder_steps=2,
    base_steps=4,
    align_steps=2,
    head_steps=2,
    lora_steps=2,
    scratch_factor=2,
    curve_points=2,
    eval_videos=4,
    curve_videos=2,
    seeds=2,
    sample_steps=2,
    i3d="random",
)
