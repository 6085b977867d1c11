"""Registry of model families and the on-disk model folder shared by every megavg model.

A family is a subpackage of :mod:`megavg.models` exposing ``FAMILY`` (its name), ``Args`` (a dataclass),
``Model`` (an ``nn.Module`` built as ``Model(args)`` with the args kept as ``model.args``) and ``PRESETS``
(``{name: Args}``). Families are imported lazily, when a preset or folder names them.

Folder layout::

    config.json                     {"format": "megavg-model", "version": 1, "family": ..., "args": {...}}
    model.safetensors               or model-0000K-of-0000N.safetensors + model.safetensors.index.json
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from megavg.utils.errors import UserError
from megavg.utils.io import atomic_dir, default_file_mode
from megavg.utils.lazy import materialize
from megavg.utils.logging import progress
from megavg.utils.schema import from_dict, to_dict

FAMILIES = {"dcaev": "megavg.models.dcaev", "wan": "megavg.models.wan"}
FORMAT = "megavg-model"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MAX_SHARD_BYTES = 4 * 1024**3


def _family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise UserError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")
    return importlib.import_module(FAMILIES[name])


def model_class(family: str) -> type[nn.Module]:
    """The model class of ``family`` (a :class:`megavg.models.base.MegavgModel`)."""
    return _family(family).Model


def list_presets() -> dict[str, str]:
    """All preset names mapped to their family."""
    return {preset: fam for fam in FAMILIES for preset in _family(fam).PRESETS}


def preset_args(name: str) -> Any:
    """The args dataclass of a preset (a fresh copy)."""
    presets = list_presets()
    if name not in presets:
        raise UserError(f"unknown model preset {name!r} (known: {', '.join(sorted(presets))})")
    return dataclasses.replace(_family(presets[name]).PRESETS[name])


def family_of(args: Any) -> str:
    """Family name of an args dataclass instance."""
    for fam in FAMILIES:
        if isinstance(args, _family(fam).Args):
            return fam
    raise UserError(f"{type(args).__name__} is not the args of any model family")


def config_args(config: dict) -> Any:
    """The args dataclass described by a model folder's config (``{"family": ..., "args": {...}}``)."""
    if "family" not in config:
        raise UserError("model config: missing key 'family'")
    return from_dict(_family(config["family"]).Args, config.get("args", {}), "args")


def runner_args(args: Any, keep_fp8: bool = False) -> Any:
    """``args`` as an exported model folder stores them: training-only choices dropped (activation
    checkpointing off, layer backends ``auto``, FP8 off unless ``keep_fp8``; see
    :func:`megavg.layers.config.runner_layers`)."""
    from megavg.layers.config import runner_layers

    changes = {}
    if hasattr(args, "grad_checkpointing"):
        changes["grad_checkpointing"] = False
    if hasattr(args, "layers"):
        changes["layers"] = runner_layers(args.layers, keep_fp8)
    return dataclasses.replace(args, **changes)


def build(spec: str | Any | dict, **overrides: Any) -> nn.Module:
    """Build a model from a preset name, an args dataclass or ``{"family": ..., "args": {...}}``.

    Keyword ``overrides`` replace args fields. Honours ``with torch.device("meta")``.
    """
    if isinstance(spec, str):
        args = preset_args(spec)
    elif isinstance(spec, dict):
        args = config_args(spec)
    else:
        args = spec
    if overrides:
        args = dataclasses.replace(args, **overrides)
    return _family(family_of(args)).Model(args)


def save(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write ``model`` (config + safetensors) to ``folder`` atomically; returns the folder."""
    args = getattr(model, "args", None)
    if args is None:
        raise UserError(f"{type(model).__name__} has no .args: not a megavg model")
    return save_state(family_of(args), to_dict(args), model.state_dict(), folder)


def save_state(family: str, args: dict, state: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Write a model folder from a family name, its args dict and a state dict (no model is built).

    ``state`` values may be lazy tensors (:func:`materialize`): they are materialised one safetensors
    shard at a time, so writing needs memory for one shard, not for the whole model.
    """
    config = {"format": FORMAT, "version": 1, "family": family, "args": args}
    state = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
    with atomic_dir(folder) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        _write_weights(state, tmp)
    return Path(folder)


def _plan_shards(state: dict[str, Any], max_bytes: int) -> list[list[str]]:
    """Keys grouped into consecutive shards of at most ``max_bytes`` (a bigger tensor: alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, value in state.items():
        nbytes = torch.Size(value.shape).numel() * value.dtype.itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def _materialized_shard(state: dict[str, Any], keys: list[str]) -> dict[str, torch.Tensor]:
    shard = {}
    for key in keys:
        tensor = materialize(state[key]).detach().contiguous().cpu()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(f"{key} contains NaN or Inf: not writing a model folder")
        shard[key] = tensor
    return shard


def _write_weights(state: dict[str, Any], folder: Path) -> None:
    write_safetensors(state, folder, "model", MAX_SHARD_BYTES)


def write_safetensors(state: dict[str, Any], folder: Path, stem: str, max_bytes: int) -> None:
    """``<stem>.safetensors``, or shards ``<stem>-0000K-of-0000N.safetensors`` of at most ``max_bytes`` plus
    ``<stem>.safetensors.index.json`` (``weight_map`` and ``metadata.total_size``, as transformers and
    diffusers write it); lazy tensors are materialised one shard at a time."""
    shards = _plan_shards(state, max_bytes)
    count = len(shards)
    names = (
        [f"{stem}.safetensors"]
        if count == 1
        else [f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    )
    mode = default_file_mode()  # safetensors writes 0600: teammates on a shared file system could not read
    total = 0
    with progress(len(state), f"writing {stem} weights", "tensor") as bar:
        for name, keys in zip(names, shards):
            shard = _materialized_shard(state, keys)
            total += sum(t.numel() * t.element_size() for t in shard.values())
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            os.chmod(folder / name, mode)
            bar.update(len(keys))
    if count > 1:
        weight_map = {key: name for name, keys in zip(names, shards) for key in keys}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def read_config(folder: str | os.PathLike) -> dict:
    """Parse and validate ``config.json`` of a model folder."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{folder}: not a megavg model folder (no {CONFIG_NAME})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{path}: not a megavg model config (format is not {FORMAT!r})")
    return config


def _weight_files(folder: Path) -> dict[str, list[str] | None]:
    """Weight file names of a folder mapped to their keys (None: keys not listed, single file)."""
    if (folder / INDEX_NAME).is_file():
        files: dict[str, list[str]] = {}
        for key, name in json.loads((folder / INDEX_NAME).read_text())["weight_map"].items():
            files.setdefault(name, []).append(key)
        return files
    if (folder / WEIGHTS_NAME).is_file():
        return {WEIGHTS_NAME: None}
    raise UserError(f"{folder}: no {WEIGHTS_NAME} or {INDEX_NAME}")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """A lazy tensor (:func:`materialize`): one tensor of a safetensors file, read when asked for."""

    path: str
    key: str
    shape: torch.Size
    dtype: torch.dtype

    def contiguous(self) -> torch.Tensor:
        with safe_open(self.path, framework="pt") as fh:
            return fh.get_tensor(self.key)

    def read_flat(self, start: int, end: int) -> torch.Tensor:
        """Elements ``[start, end)`` of the tensor flattened in row-major order, as a 1-D tensor.

        Only the rows (along the first dimension that is not 1) covering the range are read from the
        file (a safetensors slice): at most ``end - start`` plus two rows, never the whole tensor.
        """
        numel = self.shape.numel()
        if not 0 <= start <= end <= numel:
            raise ValueError(f"{self.key}: flat range [{start}, {end}) outside 0..{numel}")
        lead = next((i for i, size in enumerate(self.shape) if size != 1), len(self.shape))
        if lead == len(self.shape) or start == end:  # one element (or none): no rows to pick
            return self.contiguous().reshape(-1)[start:end]
        row = self.shape[lead + 1 :].numel()  # elements per index of dimension `lead`
        first, last = start // row, -(-end // row)
        index = (slice(None),) * lead + (slice(first, last),)
        with safe_open(self.path, framework="pt") as fh:
            rows = fh.get_slice(self.key)[index]  # (1,)*lead + (last - first, *shape[lead + 1:])
        return rows.reshape(-1)[start - first * row : end - first * row]


def _stored(path: str, fh: Any, key: str) -> StoredTensor:
    piece = fh.get_slice(key)
    return StoredTensor(path, key, torch.Size(piece.get_shape()), _SAFETENSORS_DTYPES[piece.get_dtype()])


def load_state_dict(
    folder: str | os.PathLike, names: list[str] | None = None, lazy: bool = False
) -> dict[str, Any]:
    """Read the tensors of a model folder (single file or sharded index): all, or only ``names``.

    ``lazy=True`` returns :class:`StoredTensor` entries instead, read only when materialised (export
    merges a 14B base this way without holding it in memory).
    """
    folder = Path(folder)
    wanted = None if names is None else set(names)
    state: dict[str, Any] = {}
    for name, keys in sorted(_weight_files(folder).items()):
        if wanted is not None and keys is not None and not wanted & set(keys):
            continue  # a shard holding none of the wanted tensors is not opened
        path = str(folder / name)
        try:
            with safe_open(path, framework="pt") as fh:
                for key in fh.keys():
                    if wanted is None or key in wanted:
                        state[key] = _stored(path, fh, key) if lazy else fh.get_tensor(key)
        except (SafetensorError, OSError) as err:
            raise UserError(f"{folder / name}: unreadable safetensors file ({err})") from None
    if wanted is not None and wanted - set(state):
        raise UserError(f"{folder}: no tensor {sorted(wanted - set(state))[0]!r}")
    return state


def load(folder: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a model folder written by :func:`save` (exact key match, shapes checked)."""
    config = read_config(folder)
    with torch.device("meta"):
        model = build({"family": config.get("family"), "args": config.get("args", {})})
    assign_weights(model, load_state_dict(folder), str(folder))
    return model.to(device=device).cast(dtype)


def assign_weights(model: nn.Module, state: dict[str, Any], source: str) -> nn.Module:
    """Put ``state`` into ``model`` (built on the meta device) after :func:`check_state_dict`'s exact key
    check. Transformer Engine's ``_extra_state`` entries (FP8 scaling state, present when the linear
    backend resolves to TE) are the only keys a weight file does not carry: they keep their defaults."""
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=False, assign=True)
    return model


def check_state_dict(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Raise one :class:`UserError` for missing, unexpected or mis-shaped keys, or non-finite weights.

    Lazy tensors (:func:`materialize`) are checked for shape only; :func:`save_state` checks their values
    as it writes them.
    """
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise UserError(f"{source}: weights do not match the model: {', '.join(parts)}")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise UserError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, model expects {tuple(ref.shape)}"
            )
        value = state[key]
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{source}: {key} contains NaN or Inf")
