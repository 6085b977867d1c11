"""Strict dataclass <-> dict conversion: unknown keys and wrong types are errors that name the key path.

Used for model args (config.json of a model folder) and for the training config tree (YAML + overrides).
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from megavg.utils.errors import UserError

# A decimal number as people write it: `1e-4`, `3E5`, `.5`, `-2.0e-3` (not `nan`, `inf` or `0x10`).
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) to plain JSON/YAML-able containers; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, checking every key and type; missing keys take defaults."""
    if not isinstance(data, dict):
        raise UserError(f"config {path or '<root>'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"config {_join(path, unknown[0])}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {k: coerce(hints[k], v, _join(path, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"config {path or '<root>'}: {err}") from None


def coerce(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert containers (list -> tuple etc.)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, path)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0] if errors else f"config {path}: invalid value {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise UserError(f"config {path}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        return from_dict(tp, value, path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config {path}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise UserError(f"config {path}: expected {len(args)} items, got {len(value)}")
            items = [coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config {path}: expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (Any, Any)
        return {k: coerce(val_tp, v, f"{path}.{k}") for k, v in value.items()}
    return _coerce_scalar(tp, value, path)


def _coerce_scalar(tp: Any, value: Any, path: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string
    if tp is bool and not isinstance(value, bool):
        raise UserError(f"config {path}: expected true/false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise UserError(f"config {path}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise UserError(f"config {path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def type_name(tp: Any) -> str:
    """An annotation as a user writes its value: ``int``, ``float | null``, ``[int, int]``, ``a|b``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return "any"
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin in (list, tuple):
        return f"list of {type_name(args[0]) if args else 'any'}"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, default) of every leaf field of dataclass ``cls``, nested sections expanded, in
    declaration order: the keys a YAML file or a ``section.key=value`` override may set."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = _join(prefix, f.name), hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, key)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((key, type_name(tp), _yaml_value(to_dict(default))))
    return rows


def _yaml_value(value: Any) -> str:
    if isinstance(value, str):
        return value or '""'
    return json.dumps(value)  # true / false / null / numbers / lists, as YAML reads them
