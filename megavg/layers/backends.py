"""Resolve ``auto`` layer backends to what this machine offers, logging each fallback once.

A GPU library counts as usable only when the exact entry points megavg calls import: a package that is
merely found (``find_spec``) may be a core-only Transformer Engine install (no ``transformer_engine.pytorch``
extension), the flash-attn-4 wheel (only ``flash_attn.cute``, no ``flash_attn.flash_attn_func``) or an
extension built against another torch; ``auto`` would then pick a backend that fails at the first call.
The import is tried once per process (cached) and only where a CUDA device is present.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os

import torch

from megavg.utils.errors import UserError
from megavg.utils.logging import get_logger

log = get_logger(__name__)

# Set (to 1) by the test harness when the CPU stand-ins of transformer_engine / flash_attn are on the
# path (tests/standins, docs/gpu.md): they then count as usable without a CUDA device.
STANDINS_ENV = "MEGAVG_CPU_STANDINS"

# library -> (module, names megavg takes from it): megavg.layers.linear / norms / recompute use
# te.Linear, te.LayerNormLinear, te.RMSNorm, te.checkpoint and te.autocast (te.fp8_autocast before 2.9);
# megavg.layers.attention calls flash_attn.flash_attn_func (flash-attn 2).
ENTRY_POINTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "transformer_engine": (
        "transformer_engine.pytorch",
        ("Linear", "LayerNormLinear", "RMSNorm", "checkpoint"),
    ),
    "flash_attn": ("flash_attn", ("flash_attn_func",)),
}


def _device_present() -> bool:
    return torch.cuda.is_available() or os.environ.get(STANDINS_ENV) == "1"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def unusable_reason(library: str) -> str | None:
    """Why ``library``'s entry points cannot be used here (None: they import). Cached per process."""
    if not _installed(library):
        return "not installed"
    module, names = ENTRY_POINTS[library]
    try:
        loaded = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken extension raises ImportError, OSError, RuntimeError...
        return f"installed, but `import {module}` fails ({type(exc).__name__}: {exc})"
    missing = [name for name in names if not hasattr(loaded, name)]
    if missing:
        return f"installed, but {module} has no {', '.join(missing)} (not the build megavg calls)"
    return None


def clear_cache() -> None:
    """Forget the detection results (tests that change ``sys.path`` between cases)."""
    unusable_reason.cache_clear()
    _fallback_once.cache_clear()


def _why_not(library: str) -> str | None:
    if not _device_present():
        return "no CUDA device"
    return unusable_reason(library)


@functools.cache
def _fallback_once(kind: str, library: str, torch_path: str, reason: str) -> None:
    # an installed but unusable library is a surprise worth a visible line; absence on CPU is not
    level = log.debug if reason in ("not installed", "no CUDA device") else log.warning
    level("%s backend: %s not used (%s), using %s", kind, library, reason, torch_path)


def _resolve(choice: str, gpu_name: str, library: str, kind: str, torch_name: str) -> str:
    if choice not in ("auto", gpu_name):
        return choice
    reason = _why_not(library)
    if choice == gpu_name and reason is not None:
        raise UserError(
            f"layers.{kind}: {gpu_name!r} needs {library} and a CUDA device: {reason} "
            f"(use 'auto' or '{torch_name}')"
        )
    if reason is None:
        return gpu_name
    _fallback_once(kind, library, torch_name, reason)
    return torch_name


def resolve_linear(choice: str) -> str:
    """``te`` or ``torch`` for a ``LayerConfig.linear`` value."""
    return _resolve(choice, "te", "transformer_engine", "linear", "torch")


def resolve_attention(choice: str) -> str:
    """``flash`` or ``sdpa`` for a ``LayerConfig.attention`` value."""
    return _resolve(choice, "flash", "flash_attn", "attention", "sdpa")


def te_device() -> str:
    """Where a Transformer Engine module allocates: ``meta`` under ``torch.device("meta")``, else CUDA."""
    return "meta" if torch.get_default_device().type == "meta" else "cuda"
