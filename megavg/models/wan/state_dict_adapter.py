"""Wan-2.1 weights from the published layouts into megavg's.

Two source layouts, detected from the keys (and megavg -> diffusers the other way, :func:`to_diffusers`,
:func:`diffusers_config`, :func:`save_diffusers`):
  diffusers  ``condition_embedder.time_proj.weight``, ``blocks.N.attn1.to_q.weight`` ... (Wan-AI/*-Diffusers,
             the released DC-VideoGen transformers, ``.pt`` or safetensors)
  original   ``time_projection.1.weight``, ``blocks.N.self_attn.q.weight``, ``head.head.weight`` ...

    python tools/convert_official.py wan SOURCE --out FOLDER [--preset NAME | --config FILE] [--dtype D]

SOURCE is a folder (config.json + ``*.safetensors``, sharded via an index, or one ``.pt``) or a single
``.safetensors`` / ``.pt`` file. Every source key must map to a model key and every model key must be
filled, else one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from megavg.models import registry
from megavg.models.wan.args import PRESETS, Args
from megavg.models.wan.model import Model
from megavg.utils.errors import UserError
from megavg.utils.io import atomic_dir
from megavg.utils.logging import get_logger
from megavg.utils.torchload import load_weights_only

# megavg module path -> (diffusers, original); block entries are relative to "blocks.N."
TOP_KEYS = {
    "patch_embed": ("patch_embedding", "patch_embedding"),
    "time_embed.linear_1": ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    "time_embed.linear_2": ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    "time_embed.proj": ("condition_embedder.time_proj", "time_projection.1"),
    "text_embed.linear_1": ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    "text_embed.linear_2": ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    "image_embed.norm_in": ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    "image_embed.linear_1": ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    "image_embed.linear_2": ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    "image_embed.norm_out": ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    "head.linear": ("proj_out", "head.head"),
    "head.modulation": ("scale_shift_table", "head.modulation"),
}
BLOCK_KEYS = {
    "modulation": ("scale_shift_table", "modulation"),
    # the cross-attention LayerNorm lives in the fused norm + query projection (te.LayerNormLinear names)
    "cross_attn.q.layer_norm_weight": ("norm2.weight", "norm3.weight"),
    "cross_attn.q.layer_norm_bias": ("norm2.bias", "norm3.bias"),
    "ffn.fc1": ("ffn.net.0.proj", "ffn.0"),
    "ffn.fc2": ("ffn.net.2", "ffn.2"),
    **{f"self_attn.{n}": (f"attn1.to_{n}", f"self_attn.{n}") for n in "qkv"},
    **{f"cross_attn.{n}": (f"attn2.to_{n}", f"cross_attn.{n}") for n in "qkv"},
    "self_attn.o": ("attn1.to_out.0", "self_attn.o"),
    "cross_attn.o": ("attn2.to_out.0", "cross_attn.o"),
    **{
        f"{m}.norm_{n}": (f"attn{i}.norm_{n}", f"{m}.norm_{n}")
        for i, m in ((1, "self_attn"), (2, "cross_attn"))
        for n in "qk"
    },
    "cross_attn.k_img": ("attn2.add_k_proj", "cross_attn.k_img"),
    "cross_attn.v_img": ("attn2.add_v_proj", "cross_attn.v_img"),
    "cross_attn.norm_k_img": ("attn2.norm_added_k", "cross_attn.norm_k_img"),
}
LAYOUTS = ("diffusers", "original")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
# known-unused: an I2V query norm some diffusers checkpoints carry and diffusers itself ignores on load
UNUSED_DIFFUSERS = re.compile(r"^blocks\.\d+\.attn2\.norm_added_q\.weight$")
log = get_logger(__name__)


def _reverse(table: dict[str, tuple[str, str]], layout: str) -> dict[str, str]:
    i = LAYOUTS.index(layout)
    return {names[i]: ours for ours, names in table.items()}


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """``diffusers`` or ``original``, from marker keys."""
    if "condition_embedder.time_proj.weight" in state:
        return "diffusers"
    if "time_projection.1.weight" in state:
        return "original"
    raise UserError("wan weights: neither diffusers nor original Wan layout (no time projection key found)")


def _map_path(path: str, top: dict[str, str], block: dict[str, str]) -> str | None:
    """Map a source parameter path; None when it is not part of the Wan layout."""
    for src, ours in top.items():
        if path == src or path.startswith(src + "."):
            return ours + path[len(src) :]
    match = _BLOCK.match(path)
    if match:
        index, rest = match.groups()
        for src, ours in block.items():
            if rest == src or rest.startswith(src + "."):
                return f"blocks.{index}.{ours}{rest[len(src) :]}"
    return None


def to_megavg(state: dict[str, torch.Tensor], layout: str | None = None) -> dict[str, torch.Tensor]:
    """Rename a diffusers- or original-layout state dict to megavg keys; unknown keys are an error."""
    layout = layout or detect_layout(state)
    top, block = _reverse(TOP_KEYS, layout), _reverse(BLOCK_KEYS, layout)
    unused = [k for k in state if layout == "diffusers" and UNUSED_DIFFUSERS.match(k)]
    if unused:
        log.info(
            "dropping %d unused diffusers keys attn2.norm_added_q.weight (ignored by diffusers too)",
            len(unused),
        )
    out, unknown = _rename(state, top, block, skip=set(unused).__contains__)
    if unknown:
        raise UserError(
            f"wan weights ({layout} layout): {len(unknown)} unexpected keys (e.g. {sorted(unknown)[0]})"
        )
    return out


def _rename(state: dict[str, Any], top, block, skip) -> tuple[dict[str, Any], list[str]]:
    """``state`` with every key mapped through ``_map_path(key, top, block)`` (keys where ``skip(key)``
    dropped), and the keys that map to nothing."""
    out, unknown = {}, []
    for key, tensor in state.items():
        if skip(key):
            continue
        mapped = _map_path(key, top, block)
        if mapped is None:
            unknown.append(key)
        else:
            out[mapped] = tensor
    return out, unknown


def to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """Rename a megavg Wan state dict to diffusers ``WanTransformer3DModel`` keys (values untouched, so
    lazy tensors stay lazy); unknown keys are an error."""
    return to_layout(state, "diffusers")


def to_layout(state: dict[str, Any], layout: str) -> dict[str, Any]:
    """Rename a megavg Wan state dict to the ``diffusers`` or ``original`` layout's keys (values
    untouched; ``_extra_state`` entries dropped); unknown keys are an error."""
    i = LAYOUTS.index(layout)
    top = {ours: names[i] for ours, names in TOP_KEYS.items()}
    block = {ours: names[i] for ours, names in BLOCK_KEYS.items()}
    out, unknown = _rename(state, top, block, skip=lambda key: key.endswith("_extra_state"))
    if unknown:
        raise UserError(
            f"wan weights: {len(unknown)} megavg keys without a {layout} name (e.g. {unknown[0]})"
        )
    return out


def diffusers_config(args: Args) -> dict:
    """The diffusers ``WanTransformer3DModel`` config.json of a megavg architecture."""
    if args.rope_theta != 10000.0:
        raise UserError(f"wan args: rope_theta {args.rope_theta} has no diffusers equivalent (fixed 10000)")
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(args.patch_size),
        "num_attention_heads": args.num_heads,
        "attention_head_dim": args.head_dim,
        "in_channels": args.in_channels,
        "out_channels": args.out_channels,
        "text_dim": args.text_dim,
        "freq_dim": args.freq_dim,
        "ffn_dim": args.ffn_dim,
        "num_layers": args.num_layers,
        "cross_attn_norm": args.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads",
        "eps": args.eps,
        "image_dim": args.image_dim,
        "added_kv_proj_dim": args.dim if args.is_i2v else None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None,
    }


DIFFUSERS_STEM = "diffusion_pytorch_model"


def save_diffusers(args: Args, state: dict[str, Any], folder, max_shard_bytes: int = 5 * 1024**3) -> Path:
    """Write a diffusers ``WanTransformer3DModel`` folder (config.json + safetensors shards + index)
    atomically from megavg args and state dict (lazy tensors are read one shard at a time)."""
    config = diffusers_config(args)
    renamed = to_diffusers(state)
    with atomic_dir(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        registry.write_safetensors(renamed, tmp, DIFFUSERS_STEM, max_shard_bytes)
    return Path(folder)


def args_from_config(config: dict) -> Args:
    """Model args from a diffusers (``num_attention_heads``...) or original Wan (``num_heads``...) config."""
    if "num_attention_heads" in config:
        return _args_from_diffusers(config)
    if "num_heads" in config:
        return _args_from_original(config)
    raise UserError("wan config: neither diffusers (num_attention_heads) nor original Wan (num_heads) keys")


def _args_from_diffusers(c: dict) -> Args:
    dim = c["num_attention_heads"] * c["attention_head_dim"]
    if c.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
        raise UserError(f"wan config: qk_norm {c['qk_norm']!r} is not supported (rms_norm_across_heads only)")
    if c.get("added_kv_proj_dim") not in (None, dim) or c.get("pos_embed_seq_len") is not None:
        raise UserError("wan config: added_kv_proj_dim other than dim / pos_embed_seq_len are not supported")
    return Args(
        in_channels=c.get("in_channels", 16),
        out_channels=c.get("out_channels") or c.get("in_channels", 16),
        patch_size=tuple(c.get("patch_size", (1, 2, 2))),
        dim=dim,
        num_heads=c["num_attention_heads"],
        ffn_dim=c["ffn_dim"],
        num_layers=c["num_layers"],
        text_dim=c.get("text_dim", 4096),
        freq_dim=c.get("freq_dim", 256),
        eps=c.get("eps", 1e-6),
        image_dim=c.get("image_dim"),
        cross_attn_norm=c.get("cross_attn_norm", True),
    )


def _args_from_original(c: dict) -> Args:
    i2v = c.get("model_type", "t2v") in ("i2v", "flf2v")
    return Args(
        in_channels=c["in_dim"],
        out_channels=c["out_dim"],
        patch_size=tuple(c.get("patch_size", (1, 2, 2))),
        dim=c["dim"],
        num_heads=c["num_heads"],
        ffn_dim=c["ffn_dim"],
        num_layers=c["num_layers"],
        text_dim=c.get("text_dim", 4096),
        freq_dim=c.get("freq_dim", 256),
        eps=c.get("eps", 1e-6),
        image_dim=c.get("image_dim", 1280) if i2v else None,
        cross_attn_norm=c.get("cross_attn_norm", True),
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of one ``.safetensors`` / ``.pt`` file, a safetensors index, or a folder holding them."""
    if path.is_dir():
        return read_weights(_weights_file_in(path))
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder")
    if path.name.endswith(".index.json"):
        try:
            files = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{path}: not a safetensors index ({err})") from None
        state: dict[str, torch.Tensor] = {}
        for name in files:
            state.update(read_weights(path.parent / name))
        return state
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise UserError(f"{path}: unreadable safetensors file ({err})") from None
    if path.suffix in (".pt", ".pth", ".bin"):
        return _read_torch_file(path)
    raise UserError(f"{path}: unknown weights format (expected .safetensors, an index .json or .pt)")


def _weights_file_in(folder: Path) -> Path:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    singles = sorted(folder.glob("*.safetensors"))
    pts = sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
    for found in (indexes, singles, pts):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(f"{folder}: several weight files ({', '.join(p.name for p in found)}); name one")
    raise UserError(f"{folder}: no weights (*.safetensors, *.safetensors.index.json or *.pt)")


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    obj = load_weights_only(path)
    for wrapper in ("ema_model_state_dict", "model_state_dict", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            if wrapper == "ema_model_state_dict" and len(obj) == 1:
                obj = next(iter(obj.values()))
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    return obj


def _find_args(source: Path, preset: str | None, config: Path | None) -> Args:
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"--preset {preset!r}: not a Wan preset (known: {', '.join(PRESETS)})")
        return PRESETS[preset]
    config = config or (source if source.is_dir() else source.parent) / "config.json"
    if not config.is_file():
        raise UserError(f"{source}: no config.json beside the weights; pass --preset NAME or --config FILE")
    try:
        return args_from_config(json.loads(config.read_text()))
    except json.JSONDecodeError as err:
        raise UserError(f"{config}: invalid JSON ({err})") from None
    except KeyError as err:
        raise UserError(f"{config}: missing key {err}") from None


def convert(
    source, preset: str | None = None, config=None, dtype: torch.dtype | None = None, clip: bool = True
) -> Model:
    """A megavg Wan model holding the weights at ``source`` (either layout), keys checked exactly.

    ``clip=False``: the checkpoint takes no CLIP image tokens even if an original-layout config says
    ``model_type: i2v`` (Wan 2.2 I2V-A14B experts, whose config cannot be told from Wan 2.1's)."""
    source = Path(source)
    args = _find_args(source, preset, Path(config) if config else None)
    if not clip:
        args = dataclasses.replace(args, image_dim=None)
    state = to_megavg(read_weights(source))
    with torch.device("meta"):
        model = Model(args)
    registry.assign_weights(model, state, str(source))
    return model.cast(dtype)  # the time path stays float32 (Model.keep_fp32)


DTYPES = {"keep": None, "bf16": torch.bfloat16, "fp32": torch.float32}


def convert_cli(argv: list[str]) -> None:
    """``convert_official.py wan SOURCE --out FOLDER [--preset NAME | --config FILE] [--dtype D]``."""
    parser = argparse.ArgumentParser(prog="convert_official.py wan", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="diffusers or original-Wan folder, .safetensors(.index.json) or .pt")
    parser.add_argument("--out", required=True, help="megavg model folder to write")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", help="architecture preset when the source has no config.json")
    group.add_argument("--config", help="diffusers or original Wan config.json for the architecture")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="keep")
    opts = parser.parse_args(argv)
    model = convert(opts.source, opts.preset, opts.config, DTYPES[opts.dtype])
    registry.save(model, opts.out)
    print(f"wrote {opts.out} ({sum(p.numel() for p in model.parameters()):,} parameters)")
