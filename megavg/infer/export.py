"""Write a generation pipeline folder (:mod:`megavg.infer.pipeline`) from megavg model folders.

    python tools/export_pipeline.py --transformer models/dc-videogen-t2v-14b --vae models/dcae \\
        --text-encoder /models/umt5-xxl --out pipelines/t2v [--image-encoder DIR] [--dtype bf16] [--diffusers]

``--transformer`` / ``--vae`` are megavg model folders (``tools/consolidate.py`` output, LoRA already
merged, or ``tools/convert_official.py``); weights are copied lazily, one safetensors shard at a time,
cast to ``--dtype``. Encoders are referenced (a path relative to the pipeline folder, or a hub id) unless
``--copy-encoders``.
``--diffusers`` also writes the DiT as a diffusers ``WanTransformer3DModel`` folder. The pipeline folder
appears complete or not at all.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch

from megavg.infer.pipeline import Manifest, SamplerDefaults, open_pipeline, write_manifest
from megavg.models import registry
from megavg.utils.errors import UserError
from megavg.utils.io import atomic_dir
from megavg.utils.lazy import CastTensor
from megavg.utils.schema import to_dict

DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def lazy_model(folder: str | Path, family: str, dtype: torch.dtype | None) -> tuple[dict, dict]:
    """(config, lazy state) of a megavg model folder of ``family``, floating tensors cast to ``dtype``
    (those the family keeps in float32 to float32)."""
    config = registry.read_config(folder)
    if config.get("family") != family:
        raise UserError(f"{folder}: a {config.get('family')} model folder, expected a {family} one")
    state = registry.load_state_dict(folder, lazy=True)
    if dtype is not None:  # the model's keep_fp32 tensors (Wan's time path) are written in float32
        cast = registry.model_class(family).dtype_for
        state = {k: CastTensor(v, cast(k, dtype)) if v.dtype.is_floating_point else v
                 for k, v in state.items()}  # fmt: skip
    return config, state


def _encoder_entry(source: str | None, out: Path, name: str, copy: bool, final: Path) -> str:
    """Manifest entry of an encoder: copied into the pipeline, a path relative to the pipeline folder
    ``final`` (moving the two together keeps it valid), or a hub id."""
    if not source:
        return ""
    path = Path(source)
    if not path.exists():
        if path.is_absolute() or source.startswith("."):
            raise UserError(f"{source}: no such {name.replace('_', ' ')} folder")
        return source  # a hub id
    if copy:
        shutil.copytree(path, out / name) if path.is_dir() else shutil.copy2(path, out / name)
        return name
    return os.path.relpath(path.resolve(), final.resolve())


def export_pipeline(opts: argparse.Namespace) -> Path:
    """Write the pipeline folder ``opts.out``; returns it."""
    dtype = DTYPES[opts.dtype]
    dit_config, dit_state = lazy_model(opts.transformer, "wan", dtype)
    vae_config, vae_state = lazy_model(opts.vae, "dcaev", dtype)
    dit_args = registry.runner_args(registry.config_args(dit_config), opts.fp8)
    dit_config["args"] = to_dict(dit_args)  # runner-side layer settings, whatever the folder had
    if dit_args.is_i2v and not opts.image_encoder:
        raise UserError(f"{opts.transformer}: an I2V transformer needs --image-encoder")
    vae_args = registry.config_args(vae_config)
    if dit_args.out_channels != vae_args.latent_channels:
        raise UserError(f"{opts.transformer}: {dit_args.out_channels} output channels, but the VAE has "
                        f"{vae_args.latent_channels} latent channels")  # fmt: skip
    sampler = SamplerDefaults(solver=opts.solver, shift=opts.shift, steps=opts.steps, guidance=opts.guidance)
    final = Path(opts.out)
    with atomic_dir(final) as tmp:
        registry.save_state("wan", dit_config["args"], dit_state, tmp / "transformer")
        registry.save_state("dcaev", vae_config["args"], vae_state, tmp / "vae")
        manifest = Manifest(
            text_encoder=_encoder_entry(opts.text_encoder, tmp, "text_encoder", opts.copy_encoders, final),
            tokenizer=_encoder_entry(opts.tokenizer, tmp, "tokenizer", opts.copy_encoders, final),
            image_encoder=_encoder_entry(opts.image_encoder, tmp, "image_encoder", opts.copy_encoders, final),
            scaling_factor=vae_args.scaling_factor,
            sampler=sampler,
        )
        if opts.diffusers:
            from megavg.models.wan.state_dict_adapter import save_diffusers

            shard_bytes = int(opts.max_shard_mib * 2**20)
            save_diffusers(dit_args, dit_state, tmp / "transformer_diffusers", shard_bytes)
            manifest.diffusers_transformer = "transformer_diffusers"
        write_manifest(manifest, tmp)
        open_pipeline(tmp)  # the folder must read back as a pipeline before it is published
    return Path(opts.out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str):
            raise UserError(f"export_pipeline: {message}")

    p = Parser(prog="tools/export_pipeline.py", description=__doc__.split("\n")[0])
    p.add_argument("--transformer", required=True, help="megavg Wan DiT model folder (T2V or I2V)")
    p.add_argument("--vae", required=True, help="megavg DC-AE-V model folder")
    p.add_argument("--text-encoder", required=True, help="umT5 folder (transformers) or hub id")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id when not inside --text-encoder")
    p.add_argument("--image-encoder", help="CLIP vision folder (transformers) or hub id; I2V")
    p.add_argument("--copy-encoders", action="store_true", help="copy encoder folders into the pipeline")
    p.add_argument("--solver", choices=("unipc", "euler"), default="unipc")
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--fp8", action="store_true", help="keep the DiT's FP8 setting (the runner then needs TE)")
    p.add_argument("--diffusers", action="store_true", help="also write the DiT as a diffusers folder")
    p.add_argument("--max-shard-mib", type=float, default=5120, help="diffusers shard size limit (MiB)")
    p.add_argument("--out", required=True, help="pipeline folder to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    folder = export_pipeline(parse_args(argv))
    print(f"wrote {folder}")
    return folder
