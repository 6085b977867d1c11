"""Training FLOPs of the reproduction's runs, with megavg's own counter (:mod:`megavg.train.flops`).

Per optimizer step over all ranks: the per-GPU micro-batch count of :class:`megavg.train.flops.StepFlops`
(the one behind ``perf/tflops_per_gpu``) times gradient accumulation times the data-parallel ranks (2).
The alignment phase trains only the patch embedder against the frozen base embedder (the DiT does not
run), which StepFlops does not cover: its count traces those two convolutions with the same tracer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megavg.repro.launch import recipe_args
from megavg.repro.sizes import Sizes
from megavg.tasks import build_task
from megavg.train.config import TrainConfig, load_config
from megavg.train.flops import StepFlops
from megavg.utils.meta_trace import trace_training_flops

RANKS = 2
TEXT_ROWS = 512  # the padded text context (megavg.models.wan.text.TEXT_TOKENS)
TEACHER_F, STUDENT_F = 8, 16  # spatial compression of the two autoencoders (configs/repro/ae_*.yaml)


def latent_shape(cfg: TrainConfig, sizes: Sizes) -> tuple[int, int, int, int]:
    """(C, T, H, W) of one latent sample for the run's model: the base's f8 (16 channels) or the
    student's f16 (32 channels)."""
    from megavg.tasks.base import model_args

    channels = model_args(cfg.model).in_channels
    factor = TEACHER_F if channels == 16 else STUDENT_F
    return channels, sizes.frames // 4, sizes.size // factor, sizes.size // factor


def step_flops(cfg: TrainConfig, sizes: Sizes) -> int:
    """FLOPs of one optimizer step over all ranks."""
    from megavg.tasks.base import model_args

    b = cfg.data.batch_size
    with torch.device("meta"):
        batch = {
            "latents": torch.empty(b, *latent_shape(cfg, sizes)),
            "text": torch.empty(b, TEXT_ROWS, model_args(cfg.model).text_dim),
        }
    per_gpu = StepFlops(cfg, build_task(cfg))(batch)
    return int(per_gpu * cfg.schedule.grad_accum * RANKS)


def run_step_flops(run_dir: Path, sizes: Sizes) -> int:
    """Step FLOPs of a finished run, from its resolved config."""
    return step_flops(load_config(Path(run_dir) / "config.yaml"), sizes)


def config_step_flops(recipe: str, sizes: Sizes, overrides: list[str] = ()) -> int:
    """Step FLOPs of a ``configs/repro`` recipe before it runs."""
    args = recipe_args(recipe)
    cfg = load_config(args[1], [*args[2:], *overrides])
    return step_flops(cfg, sizes)


def align_step_flops(sizes: Sizes) -> int:
    """Alignment step FLOPs over all ranks (``configs/repro/adapt_1_align.yaml``): the student embedder
    (forward + weight gradient) and the frozen teacher embedder (forward) on one micro-batch per rank."""
    from megavg.tasks.base import model_args

    args = recipe_args("adapt_1_align")
    cfg = load_config(args[1], args[2:])
    b, dim = cfg.data.batch_size, model_args(cfg.model).dim
    with torch.device("meta"):
        student = torch.nn.Conv3d(32, dim, 1)
        teacher = torch.nn.Conv3d(16, dim, (1, 2, 2), stride=(1, 2, 2)).requires_grad_(False)
        x_student = torch.empty(b, 32, sizes.frames // 4, sizes.size // STUDENT_F, sizes.size // STUDENT_F)
        x_teacher = torch.empty(b, 16, sizes.frames // 4, sizes.size // TEACHER_F, sizes.size // TEACHER_F)
    fwd, bwd = trace_training_flops(lambda: student(x_student).sum() + teacher(x_teacher).sum())
    return int((fwd + bwd) * cfg.schedule.grad_accum * RANKS)


def adapt_phases(sizes: Sizes, align: bool = True) -> dict[str, dict]:
    """Steps and step FLOPs of each AE-Adapt-V phase (``align`` False: phases 2 and 3 only)."""
    phases = {"align": {"steps": sizes.align_steps, "step_flops": align_step_flops(sizes)}} if align else {}
    for name, recipe, steps in (
        ("head", "adapt_2_head", sizes.head_steps),
        ("lora", "adapt_3_lora", sizes.lora_steps),
    ):
        phases[name] = {"steps": steps, "step_flops": config_step_flops(recipe, sizes)}
    return phases
