"""Wan 2.2 checkpoints (two-expert A14B, TI2V-5B) into a megavg experts folder.

    python tools/convert_official.py wan22 SOURCE --out FOLDER [--boundary R] [--dtype D]

SOURCE layouts (detected from the folder):
  diffusers  ``model_index.json`` (``boundary_ratio``, ``expand_timesteps``), ``transformer/`` (the
             high-noise expert, or TI2V-5B's only model) and ``transformer_2/`` (the low-noise expert)
  original   ``high_noise_model/`` + ``low_noise_model/`` (A14B), each a config.json + safetensors; the
             boundary is the Wan 2.2 task config's (T2V 0.875, I2V 0.9, told apart by the 16 / 36 input
             channels) unless ``--boundary`` says otherwise. TI2V-5B's original folder is one model
             (``model_type: ti2v``): ``convert_official.py wan`` converts it, this command too.

FOLDER gets ``transformer/`` (+ ``transformer_2/``), megavg model folders, and ``experts.json``
(:class:`Experts`). The diffusers pipeline sends timesteps ``t >= boundary_ratio * 1000`` to
``transformer`` and the rest to ``transformer_2``; so does :func:`megavg.infer.sampling.sample`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from megavg.models import registry
from megavg.models.wan.model import Model
from megavg.models.wan.state_dict_adapter import DTYPES, convert
from megavg.utils.errors import UserError
from megavg.utils.io import atomic_dir
from megavg.utils.schema import from_dict, to_dict

EXPERTS_FILE = "experts.json"
EXPERT_DIRS = ("transformer", "transformer_2")
ORIGINAL_DIRS = ("high_noise_model", "low_noise_model")
# Wan2.2 wan/configs/wan_{t2v,i2v}_A14B.py: boundary (fraction of the 1000 training timesteps)
ORIGINAL_BOUNDARY = {16: 0.875, 36: 0.9}


@dataclass
class Experts:
    """How a Wan 2.2 pipeline drives its transformers (diffusers ``model_index.json`` names)."""

    boundary_ratio: float | None = None  # None: one transformer for every step
    expand_timesteps: bool = False  # TI2V-5B: per-token timesteps, the conditioning frame's at 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable JSON ({err})") from None


def find_experts(source: Path, boundary: float | None = None) -> tuple[list[Path], Experts, bool]:
    """(expert folders, high noise first; how they are driven; whether they take CLIP tokens)."""
    if (source / "model_index.json").is_file():
        index = _read_json(source / "model_index.json")
        dirs = [source / d for d in EXPERT_DIRS if isinstance(index.get(d), list) and (source / d).is_dir()]
        if not dirs or dirs[0].name != "transformer":
            raise UserError(f"{source}: model_index.json names no transformer/ folder")
        ratio = index.get("boundary_ratio") if boundary is None else boundary
        if (len(dirs) == 2) != (ratio is not None):
            raise UserError(f"{source}: {len(dirs)} transformer(s) but boundary_ratio {ratio}")
        return dirs, Experts(ratio, bool(index.get("expand_timesteps", False))), True
    if all((source / d).is_dir() for d in ORIGINAL_DIRS):
        dirs = [source / d for d in ORIGINAL_DIRS]
        if boundary is None:
            in_dim = _read_json(dirs[0] / "config.json").get("in_dim")
            if in_dim not in ORIGINAL_BOUNDARY:
                raise UserError(
                    f"{dirs[0]}: in_dim {in_dim} is neither T2V (16) nor I2V (36); pass --boundary"
                )
            boundary = ORIGINAL_BOUNDARY[in_dim]
        return dirs, Experts(boundary), False  # Wan 2.2 experts take no CLIP tokens
    if (source / "config.json").is_file() and _read_json(source / "config.json").get("model_type") == "ti2v":
        return [source], Experts(None, expand_timesteps=True), False
    raise UserError(
        f"{source}: not a Wan 2.2 folder (no model_index.json, no high_noise_model/ + low_noise_model/, "
        "no ti2v config.json)"
    )


def convert_experts(source, boundary: float | None = None, dtype=None) -> tuple[list[Model], Experts]:
    """The experts at ``source`` as megavg models (high noise first) and how they are driven."""
    dirs, experts, clip = find_experts(Path(source), boundary)
    models = [convert(d, dtype=dtype, clip=clip) for d in dirs]
    if len({(m.args.in_channels, m.args.out_channels, m.args.image_dim) for m in models}) != 1:
        raise UserError(f"{source}: the two experts differ in input/output channels")
    return models, experts


def save_experts(models: list[Model], experts: Experts, folder) -> Path:
    """Write ``transformer/`` (+ ``transformer_2/``) and ``experts.json`` to ``folder`` atomically."""
    with atomic_dir(folder) as tmp:
        for model, name in zip(models, EXPERT_DIRS):
            registry.save(model, tmp / name)
        (tmp / EXPERTS_FILE).write_text(json.dumps(to_dict(experts), indent=2) + "\n")
    return Path(folder)


def read_experts(folder) -> Experts:
    """``experts.json`` of a folder written by :func:`save_experts`."""
    return from_dict(Experts, _read_json(Path(folder) / EXPERTS_FILE), EXPERTS_FILE)


def convert_cli(argv: list[str]) -> None:
    """``convert_official.py wan22 SOURCE --out FOLDER [--boundary R] [--dtype D]``."""
    parser = argparse.ArgumentParser(prog="convert_official.py wan22", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="Wan 2.2 diffusers pipeline folder or original A14B / TI2V-5B folder")
    parser.add_argument("--out", required=True, help="megavg experts folder to write")
    parser.add_argument("--boundary", type=float, help="override the expert switch (boundary_ratio)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="keep")
    opts = parser.parse_args(argv)
    models, experts = convert_experts(Path(opts.source), opts.boundary, DTYPES[opts.dtype])
    save_experts(models, experts, opts.out)
    count = sum(p.numel() for p in models[0].parameters())
    print(f"wrote {opts.out} ({len(models)} transformer(s) of {count:,} parameters, {to_dict(experts)})")
