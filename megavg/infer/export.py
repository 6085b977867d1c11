"""Write a generation pipeline folder (:mod:`megavg.infer.pipeline`) from megavg model folders.

    python tools/export_pipeline.py --transformer models/dc-videogen-t2v-14b --vae models/dcae \\
        --text-encoder /models/umt5-xxl --out pipelines/t2v [--image-encoder DIR] [--dtype bf16] [--diffusers]

``--transformer`` / ``--vae`` are megavg model folders (``tools/consolidate.py`` output, LoRA already
merged, or ``tools/convert_official.py``); weights are copied lazily, one safetensors shard at a time,
cast to ``--dtype``. Encoders are referenced (a path relative to the pipeline
folder, or a hub id) unless ``--copy-encoders``.
``--diffusers`` also writes the DiT as a diffusers ``WanTransformer3DModel`` folder. Wan 2.2 A14B: the
low-noise expert as ``--transformer-2`` with the switch ``--boundary`` (diffusers' ``boundary_ratio``) and
optionally its guidance ``--guidance-2``; ``--diffusers`` then writes ``diffusers/`` (``transformer/``,
``transformer_2/``, ``model_index.json``), which ``tools/convert_official.py wan22`` reads back. A base
pipeline (e.g. Wan 2.2 TI2V-5B as released, converted) takes the Wan VAE as ``--vae`` (a diffusers
``AutoencoderKLWan`` folder, copied); TI2V adds ``--expand-timesteps``. The pipeline folder appears
complete or not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from megavg.infer.pipeline import Manifest, SamplerDefaults, open_pipeline, write_manifest
from megavg.infer.wan_vae import vae_folder, wan_vae_args
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
    wan_vae = vae_folder(opts.vae)  # a base pipeline's Wan VAE (diffusers), copied as it is
    vae_config, vae_state = (None, None) if wan_vae else lazy_model(opts.vae, "dcaev", dtype)
    dit_args = registry.runner_args(registry.config_args(dit_config), opts.fp8)
    dit_config["args"] = to_dict(dit_args)  # runner-side layer settings, whatever the folder had
    if dit_args.is_i2v and not opts.image_encoder:
        raise UserError(f"{opts.transformer}: an I2V transformer needs --image-encoder")
    vae_args = wan_vae_args(wan_vae) if wan_vae else registry.config_args(vae_config)
    if dit_args.out_channels != vae_args.latent_channels:
        raise UserError(f"{opts.transformer}: {dit_args.out_channels} output channels, but the VAE has "
                        f"{vae_args.latent_channels} latent channels")  # fmt: skip
    expert_2 = _second_expert(opts, dit_args, dtype)
    sampler = SamplerDefaults(solver=opts.solver, shift=opts.shift, steps=opts.steps, guidance=opts.guidance,
                              guidance_2=opts.guidance_2)  # fmt: skip
    final = Path(opts.out)
    with atomic_dir(final) as tmp:
        registry.save_state("wan", dit_config["args"], dit_state, tmp / "transformer")
        if expert_2 is not None:
            registry.save_state("wan", expert_2[0]["args"], expert_2[1], tmp / "transformer_2")
        if wan_vae:
            shutil.copytree(wan_vae, tmp / "vae")
        else:
            registry.save_state("dcaev", vae_config["args"], vae_state, tmp / "vae")
        manifest = Manifest(
            text_encoder=_encoder_entry(opts.text_encoder, tmp, "text_encoder", opts.copy_encoders, final),
            tokenizer=_encoder_entry(opts.tokenizer, tmp, "tokenizer", opts.copy_encoders, final),
            image_encoder=_encoder_entry(opts.image_encoder, tmp, "image_encoder", opts.copy_encoders, final),
            scaling_factor=vae_args.scaling_factor,
            sampler=sampler,
            expand_timesteps=opts.expand_timesteps,
        )
        if expert_2 is not None:
            manifest.transformer_2, manifest.boundary = "transformer_2", opts.boundary
        if opts.diffusers:
            _write_diffusers(opts, manifest, tmp, dit_args, [dit_state] + ([expert_2[1]] if expert_2 else []))
        write_manifest(manifest, tmp)
        open_pipeline(tmp)  # the folder must read back as a pipeline before it is published
    return Path(opts.out)


def _second_expert(opts: argparse.Namespace, dit_args, dtype) -> tuple[dict, dict] | None:
    """(config, lazy state) of ``--transformer-2`` (Wan 2.2 A14B's low-noise expert), checked against the
    first; None without one."""
    if (opts.transformer_2 is None) != (opts.boundary is None):
        raise UserError("export_pipeline: --transformer-2 and --boundary come together")
    if opts.guidance_2 is not None and opts.transformer_2 is None:
        raise UserError("export_pipeline: --guidance-2 needs --transformer-2")
    if opts.transformer_2 is None:
        return None
    if not 0 < opts.boundary < 1:
        raise UserError(f"export_pipeline: --boundary {opts.boundary} is not in (0, 1)")
    config, state = lazy_model(opts.transformer_2, "wan", dtype)
    args = registry.runner_args(registry.config_args(config), opts.fp8)
    config["args"] = to_dict(args)
    first, second = ((a.in_channels, a.out_channels, a.patch_size, a.image_dim) for a in (dit_args, args))
    if first != second:
        raise UserError(f"{opts.transformer_2}: {second} does not match --transformer {first} "
                        "(in/out channels, patch, CLIP width)")  # fmt: skip
    return config, state


def _write_diffusers(opts, manifest: Manifest, tmp: Path, dit_args, states: list[dict]) -> None:
    """The DiT(s) as diffusers ``WanTransformer3DModel`` folders. One: ``transformer_diffusers/``. Two
    experts: ``diffusers/`` holding ``transformer/``, ``transformer_2/`` and a ``model_index.json`` with
    the ``boundary_ratio``, the layout ``convert_official.py wan22`` reads back."""
    from megavg.models.wan.state_dict_adapter import save_diffusers

    shard_bytes = int(opts.max_shard_mib * 2**20)
    if len(states) == 1:
        save_diffusers(dit_args, states[0], tmp / "transformer_diffusers", shard_bytes)
        manifest.diffusers_transformer = "transformer_diffusers"
        return
    names = ["transformer", "transformer_2"]
    for name, state in zip(names, states):
        save_diffusers(dit_args, state, tmp / "diffusers" / name, shard_bytes)
    index = {"_class_name": "WanPipeline", "boundary_ratio": opts.boundary, "expand_timesteps": False,
             **{name: ["diffusers", "WanTransformer3DModel"] for name in names}}  # fmt: skip
    (tmp / "diffusers" / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    manifest.diffusers_transformer, manifest.diffusers_transformer_2 = (
        "diffusers/transformer",
        "diffusers/transformer_2",
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str):
            raise UserError(f"export_pipeline: {message}")

    p = Parser(prog="tools/export_pipeline.py", description=__doc__.split("\n")[0])
    p.add_argument("--transformer", required=True, help="megavg Wan DiT model folder (T2V or I2V)")
    p.add_argument("--transformer-2", help="Wan 2.2 A14B: the low-noise expert's megavg model folder")
    p.add_argument("--boundary", type=float, help="with --transformer-2: the switch (boundary_ratio)")
    p.add_argument("--vae", required=True,
                   help="megavg DC-AE-V model folder; a base pipeline: the Wan VAE (diffusers "
                        "AutoencoderKLWan folder, or a diffusers pipeline folder holding vae/)")  # fmt: skip
    p.add_argument("--expand-timesteps", action="store_true",
                   help="Wan 2.2 TI2V-5B: with --image, the image is the DiT's clean first latent frame "
                        "(needs the Wan 2.2 VAE as --vae)")  # fmt: skip
    p.add_argument("--text-encoder", required=True, help="umT5 folder (transformers) or hub id")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id when not inside --text-encoder")
    p.add_argument("--image-encoder", help="CLIP vision folder (transformers) or hub id; I2V")
    p.add_argument("--copy-encoders", action="store_true", help="copy encoder folders into the pipeline")
    p.add_argument("--solver", choices=("unipc", "euler"), default="unipc")
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--guidance-2", type=float, help="with --transformer-2: the low-noise expert's guidance")
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
