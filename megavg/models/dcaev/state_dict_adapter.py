"""Conversion of the authors' DC-AE-V checkpoints (DESIGN.md §4) into megavg model folders.

The authors' ``.pt`` holds ``{"model_state_dict": sd}`` or ``{"ema_model_state_dict": {<one key>: sd}}``
(EMA preferred); it is read with ``torch.load(weights_only=True)`` and nothing else. Their modules wrap
every conv in a layer object and every block in a residual/sequence wrapper, so their keys carry extra
levels (``...op_list.<j>.main.conv1.conv.weight``); :func:`authors_key_map` lists, for every megavg key,
the one authors' key it comes from. Every key on both sides must be accounted for.

    python tools/convert_official.py dcaev dc-ae-v-f32t4c32-1.0-bf16.pt --arch dc-ae-v-f32t4c32 --out F
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from megavg.models.dcaev.args import Args
from megavg.models.dcaev.model import Model
from megavg.models.registry import check_state_dict, preset_args
from megavg.utils.errors import UserError
from megavg.utils.schema import from_dict
from megavg.utils.torchload import load_weights_only

# keys of the authors' config objects that describe runtime behaviour, not architecture
_AUTHORS_RUNTIME_KEYS = {
    "num_pad_frames", "temporal_remainder", "pretrained_path", "pretrained_source", "pretrained_ema",
    "zero_out", "use_feature_cache", "encode_temporal_tile_size", "encode_temporal_tile_latent_size",
    "decode_temporal_tile_size", "decode_temporal_tile_latent_size", "encode_temporal_tile_overlap_factor",
    "decode_temporal_tile_overlap_factor", "spatial_tile_size", "spatial_tile_overlap_factor", "verbose",
}  # fmt: skip
_BLOCK_KEYS = {  # ours (inside a ResBlock) -> theirs (inside op_list.<j>.main)
    "conv1.weight": "conv1.conv.weight",
    "conv1.bias": "conv1.conv.bias",
    "conv2.weight": "conv2.conv.weight",
    "norm.weight": "conv2.norm.weight",
    "norm.bias": "conv2.norm.bias",
}
_CONV_KEYS = ("weight", "bias")


def _blocks(ours: str, theirs: str, depth: int, first: int) -> dict[str, str]:
    return {
        f"{ours}.blocks.{j}.{k}": f"{theirs}.op_list.{first + j}.main.{v}"
        for j in range(depth)
        for k, v in _BLOCK_KEYS.items()
    }


def _pair(ours: str, theirs: str) -> dict[str, str]:
    return {f"{ours}.{k}": f"{theirs}.{k}" for k in _CONV_KEYS}


def authors_key_map(model: Model) -> dict[str, str]:
    """megavg key -> authors' key, for every parameter of ``model``."""
    out = _pair("encoder.project_in.conv", "encoder.project_in.conv.conv")
    for i, stage in enumerate(model.encoder.stages):
        ours, theirs, depth = f"encoder.stages.{i}", f"encoder.stages.{i}", len(stage.blocks)
        out |= _blocks(ours, theirs, depth, first=0)
        if stage.downsample is not None:  # after the blocks
            out |= _pair(f"{ours}.downsample.conv", f"{theirs}.op_list.{depth}.main.conv.conv")
    out |= _pair("encoder.project_out", "encoder.project_out.conv")
    out |= _pair("decoder.project_in", "decoder.project_in.conv")
    for i, stage in enumerate(model.decoder.stages):
        ours, theirs, has_up = f"decoder.stages.{i}", f"decoder.stages.{i}", stage.upsample is not None
        if has_up:  # before the blocks
            out |= _pair(f"{ours}.upsample.conv", f"{theirs}.op_list.0.main.conv.conv")
        out |= _blocks(ours, theirs, len(stage.blocks), first=int(has_up))
    out |= _pair("decoder.project_out.norm", "decoder.project_out.op_list.0")  # op_list.1 is the SiLU
    out |= _pair("decoder.project_out.conv.conv", "decoder.project_out.op_list.2.conv.conv")
    ours = set(model.state_dict())
    if set(out) != ours:  # a model change that this table does not know about
        raise RuntimeError(f"authors_key_map out of date: {sorted(ours ^ set(out))[:3]}")
    return out


def from_authors(state: dict[str, torch.Tensor], model: Model, source: str) -> dict[str, torch.Tensor]:
    """Rename an authors' state dict to megavg keys; missing/unexpected/mis-shaped keys -> UserError."""
    mapping = authors_key_map(model)
    theirs = set(mapping.values())
    missing = sorted(theirs - set(state))
    unexpected = sorted(set(state) - theirs)
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        raise UserError(f"{source}: weights do not match the architecture: {', '.join(parts)}")
    expected = model.state_dict()
    for ours, key in mapping.items():
        if tuple(state[key].shape) != tuple(expected[ours].shape):
            got, want = tuple(state[key].shape), tuple(expected[ours].shape)
            raise UserError(f"{source}: {key} has shape {got}, the architecture expects {want}")
    converted = {ours: state[key] for ours, key in mapping.items()}
    check_state_dict(model, converted, source)  # NaN/Inf
    return converted


def read_authors_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load the authors' ``.pt`` safely (weights only) and return its (EMA if present) state dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    blob = load_weights_only(path, "not a loadable weights-only checkpoint")
    if not isinstance(blob, dict):
        raise UserError(f"{path}: expected a dict with 'model_state_dict', got {type(blob).__name__}")
    if "ema_model_state_dict" in blob:
        ema = blob["ema_model_state_dict"]
        if not isinstance(ema, dict) or len(ema) != 1:
            raise UserError(f"{path}: 'ema_model_state_dict' should hold exactly one state dict")
        state = next(iter(ema.values()))
    elif "model_state_dict" in blob:
        state = blob["model_state_dict"]
    else:
        raise UserError(f"{path}: no 'model_state_dict' or 'ema_model_state_dict' (keys: {sorted(blob)[:5]})")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: the state dict is not a mapping of tensors")
    return state


def args_from_authors_json(path: str | Path, scaling_factor: float | None) -> Args:
    """Args from the authors' architecture description (ARCH.json)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read architecture JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: architecture JSON must be an object")
    data = {k: v for k, v in data.items() if k not in _AUTHORS_RUNTIME_KEYS}
    for coder in ("encoder", "decoder"):
        if isinstance(data.get(coder), dict):
            sub = {k: v for k, v in data[coder].items() if k not in ("in_channels", "latent_channels")}
            if sub.pop("zero_out", False) not in (False, None):
                raise UserError(f"{path}: {coder}.zero_out is not supported")
            data[coder] = sub
    if scaling_factor is not None:
        data["scaling_factor"] = scaling_factor
    return from_dict(Args, data, "arch")


def resolve_arch(arch: str, scaling_factor: float | None) -> Args:
    """A preset name or an authors' ARCH.json path."""
    if arch.endswith(".json") or Path(arch).is_file():
        return args_from_authors_json(arch, scaling_factor)
    args = preset_args(arch)
    if scaling_factor is not None:
        args.scaling_factor = scaling_factor
    return args


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one error line instead of usage + exit
        raise UserError(f"convert dcaev: {message}")


_DTYPES = {"keep": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


def convert(checkpoint: str, arch: str, out: str, scaling_factor: float | None = None, dtype: str = "keep"):
    """Convert an authors' checkpoint to a megavg model folder; returns the folder path."""
    args = resolve_arch(arch, scaling_factor)
    state = read_authors_checkpoint(checkpoint)
    with torch.device("meta"):
        model = Model(args)
    converted = from_authors(state, model, str(checkpoint))
    if _DTYPES[dtype] is not None:
        converted = {k: v.to(_DTYPES[dtype]) for k, v in converted.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    return model.save(out)


def convert_cli(argv: list[str] | None = None) -> None:
    """``convert_official.py dcaev CHECKPOINT --arch PRESET|ARCH.json --out FOLDER``."""
    parser = _Parser(prog="convert_official.py dcaev", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="authors' .pt file")
    parser.add_argument("--arch", required=True, help="preset name or the authors' ARCH.json")
    parser.add_argument("--out", required=True, help="output model folder")
    parser.add_argument("--scaling-factor", type=float, default=None, help="latent scaling factor")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="keep")
    ns = parser.parse_args(argv)
    folder = convert(ns.checkpoint, ns.arch, ns.out, ns.scaling_factor, ns.dtype)
    print(f"wrote {folder}")
