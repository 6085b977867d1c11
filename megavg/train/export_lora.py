"""The trained LoRA of a run as a file other tools load, unmerged (docs/lora_files.md has the table).

    python tools/export_lora.py RUN_DIR --format diffusers|wan|peft --out FILE.safetensors [--raw]

Like ``tools/consolidate.py`` it reads the latest complete ZeRO-3 checkpoint and exports the EMA
adapters when the run keeps an EMA (``model.ema``), ``--raw`` the trained ones. Formats:

  diffusers  ``transformer.<diffusers module>.lora_A.weight`` / ``lora_B.weight`` (alpha / rank folded
             into ``lora_B``) with diffusers' adapter metadata (rank, alpha = rank, targets) in the
             safetensors header: ``WanPipeline.load_lora_weights`` and
             ``WanTransformer3DModel.load_lora_adapter`` load it.
  wan        the original Wan names ComfyUI loads: ``diffusion_model.<module>.lora_down.weight`` (A),
             ``lora_up.weight`` (B), ``alpha``; fully trained layers as ``diff`` / ``diff_b`` (trained minus
             the run's starting weights).
  peft       a folder (``--out`` names it): ``adapter_model.safetensors`` + ``adapter_config.json`` for
             ``PeftModel.from_pretrained`` on diffusers' ``WanTransformer3DModel``; fully trained layers
             are peft's ``modules_to_save``.

Layers the run trains fully (``task.args.train_fully``: patch embedder, head) have no place in a diffusers
LoRA file: that format is refused (exit 2) with one line naming the layers and the alternatives (the wan
or peft format, or the merged model from ``tools/consolidate.py``), rather than writing a file that
silently lacks trained weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from megavg.models import registry
from megavg.models.wan.state_dict_adapter import to_layout
from megavg.tasks import build_task
from megavg.tasks.base import model_args
from megavg.train import ckpt_integrity
from megavg.train.checkpoint import read_latest
from megavg.train.consolidate import checkpoint_config, initial_state, trained_state
from megavg.utils.errors import UserError, run_cli
from megavg.utils.io import atomic_dir, atomic_file, save_safetensors
from megavg.utils.lazy import materialize

FORMATS = ("diffusers", "wan", "peft")
DIFFUSERS_PREFIX = "transformer"  # diffusers' default prefix of the transformer's LoRA keys
COMFY_PREFIX = "diffusion_model"


@dataclasses.dataclass
class Adapters:
    """A run's LoRA: ``pairs`` megavg module -> (A [r, in], B [out, r]); ``full`` megavg parameter ->
    (trained, starting) tensors of the fully trained layers; effective weight W + alpha / rank * B @ A."""

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    full: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int
    alpha: float


def collect_adapters(trained: dict[str, Any], initial: Callable[[], dict], task_args) -> Adapters:
    """Adapters of ``trained`` (peft-named: ``X.lora_A.<adapter>.weight``...) and its ``train_fully``
    tensors with their starting values in ``initial()`` (called only when there are such tensors);
    frozen tensors a checkpoint may hold are left out."""
    pairs, full, start = {}, {}, None
    prefixes = tuple(f"{p}." for p in task_args.train_fully)
    for key, value in trained.items():
        if ".lora_A." in key:
            module, adapter = key.split(".lora_A.")
            up = trained[f"{module}.lora_B.{adapter}"]
            pairs[module] = materialize(value).float(), materialize(up).float()
        elif key.startswith(prefixes) and ".lora_B." not in key:
            plain, start = key.replace(".base_layer.", "."), start or initial()
            full[plain] = materialize(value).float(), materialize(start[plain]).float()
    if not pairs:
        raise UserError("the checkpoint holds no LoRA adapter (lora_A/lora_B tensors): not a LoRA run?")
    return Adapters(pairs, full, task_args.rank, float(task_args.alpha))


def _names(modules, layout: str) -> dict[str, str]:
    """megavg module name -> its name in the diffusers or original Wan layout."""
    renamed = to_layout({f"{m}.weight": m for m in modules}, layout)
    return {m: key.removesuffix(".weight") for key, m in renamed.items()}


def diffusers_file(ad: Adapters) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors metadata of the diffusers format."""
    if ad.full:
        layers = sorted({k.rsplit(".", 1)[0] for k in ad.full})
        raise UserError(
            f"--format diffusers: the run trains {', '.join(layers)} fully and diffusers LoRA files have no "
            "place for full weights; use --format wan or peft, or export the merged model "
            "(python tools/consolidate.py RUN_DIR --out FOLDER)"
        )
    names = _names(ad.pairs, "diffusers")
    tensors = {}
    for module, (down, up) in ad.pairs.items():
        tensors[f"{DIFFUSERS_PREFIX}.{names[module]}.lora_A.weight"] = down
        tensors[f"{DIFFUSERS_PREFIX}.{names[module]}.lora_B.weight"] = up * (ad.alpha / ad.rank)
    # alpha / rank is folded into lora_B and the metadata says alpha = rank (scale 1): diffusers reads the
    # metadata only on some call paths (load_lora_adapter(file) without use_safetensors=True skips it)
    # and assumes alpha = rank without it, so the file means the same on every path
    config = {"r": ad.rank, "lora_alpha": ad.rank, "target_modules": sorted(names.values())}
    packed = {f"{DIFFUSERS_PREFIX}.{k}": v for k, v in config.items()}  # as diffusers' save_lora_weights
    return tensors, {"format": "pt", "lora_adapter_metadata": json.dumps(packed, sort_keys=True)}


def wan_file(ad: Adapters) -> dict[str, torch.Tensor]:
    """Tensors of the original-Wan (ComfyUI) format."""
    names = _names([*ad.pairs, *{k.rsplit(".", 1)[0] for k in ad.full}], "original")
    tensors = {}
    for module, (down, up) in ad.pairs.items():
        tensors[f"{COMFY_PREFIX}.{names[module]}.lora_down.weight"] = down
        tensors[f"{COMFY_PREFIX}.{names[module]}.lora_up.weight"] = up
        tensors[f"{COMFY_PREFIX}.{names[module]}.alpha"] = torch.tensor(ad.alpha)
    for key, (value, start) in ad.full.items():
        module, kind = key.rsplit(".", 1)
        suffix = {"weight": "diff", "bias": "diff_b"}[kind]
        tensors[f"{COMFY_PREFIX}.{names[module]}.{suffix}"] = value - start
    return tensors


def peft_folder(ad: Adapters, base: str | None) -> tuple[dict[str, torch.Tensor], Any]:
    """Tensors and ``LoraConfig`` of the peft format (module names of diffusers' WanTransformer3DModel)."""
    from peft import LoraConfig

    names = _names(ad.pairs, "diffusers")
    full = to_layout({k: v for k, (v, _) in ad.full.items()}, "diffusers")
    tensors = {}
    for module, (down, up) in ad.pairs.items():
        tensors[f"base_model.model.{names[module]}.lora_A.weight"] = down
        tensors[f"base_model.model.{names[module]}.lora_B.weight"] = up
    tensors.update({f"base_model.model.{key}": value for key, value in full.items()})
    saved = sorted({k.rsplit(".", 1)[0] for k in full}) or None
    config = LoraConfig(r=ad.rank, lora_alpha=ad.alpha, target_modules=sorted(names.values()),
                        modules_to_save=saved, base_model_name_or_path=base, lora_dropout=0.0)  # fmt: skip
    return tensors, config


def write(ad: Adapters, fmt: str, out: str | Path, base: str | None = None) -> Path:
    """Write ``ad`` in format ``fmt`` to ``out`` (a file; for peft a folder), atomically."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: not one of {', '.join(FORMATS)}")
    out = Path(out)
    if fmt == "peft":
        tensors, config = peft_folder(ad, base)
        with atomic_dir(out) as tmp:
            tensors = {k: v.contiguous() for k, v in tensors.items()}
            save_safetensors(tensors, tmp / "adapter_model.safetensors")
            config.save_pretrained(tmp)
        return out
    tensors, metadata = diffusers_file(ad) if fmt == "diffusers" else (wan_file(ad), {"format": "pt"})
    with atomic_file(out) as tmp:
        save_safetensors({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    return out


def export_lora(run_dir: str | Path, fmt: str, out: str | Path, raw: bool = False) -> Path:
    """Export the LoRA of ``run_dir``'s latest checkpoint (EMA adapters unless ``raw``) to ``out``."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    tag = read_latest(ckpt_dir) if ckpt_dir.is_dir() else None
    if tag is None:
        raise UserError(f"{run_dir}: no complete checkpoint (no {ckpt_dir / 'latest'})")
    ckpt_integrity.verify(ckpt_dir / tag)
    cfg = checkpoint_config(ckpt_dir / tag / "config.yaml")
    task_args = build_task(cfg).args
    if not hasattr(task_args, "rank"):
        raise UserError(
            f"{run_dir}: task {cfg.task.name} trains no LoRA (export the model: tools/consolidate.py)"
        )
    args = model_args(cfg.model)
    if registry.family_of(args) != "wan":
        raise UserError(f"{run_dir}: LoRA files are written for Wan models, not {registry.family_of(args)}")
    trained = trained_state(ckpt_dir, tag, raw)
    adapters = collect_adapters(trained, lambda: initial_state(cfg, args), task_args)
    return write(adapters, fmt, out, base=cfg.model.init or None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tools/export_lora.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a LoRA training run.dir (holds checkpoints/latest)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="whose key names to write")
    parser.add_argument("--out", required=True, help="file to write (.safetensors); a folder for peft")
    parser.add_argument("--raw", action="store_true", help="the trained adapters, not their EMA")
    args = parser.parse_args(argv)
    print(f"wrote {export_lora(args.run_dir, args.format, args.out, raw=args.raw)}")


if __name__ == "__main__":
    run_cli(main)
