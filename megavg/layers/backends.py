"""Resolve ``auto`` layer backends to what this machine offers, logging each fallback once."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from megavg.utils.errors import UserError
from megavg.utils.logging import get_logger

log = get_logger(__name__)

# Set (to 1) by the test harness when the CPU stand-ins of transformer_engine / flash_attn are on the
# path (tests/standins, docs/gpu.md): they then count as usable without a CUDA device.
STANDINS_ENV = "MEGAVG_CPU_STANDINS"


def _device_present() -> bool:
    return torch.cuda.is_available() or os.environ.get(STANDINS_ENV) == "1"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def _fallback_once(kind: str, library: str, torch_path: str) -> None:
    reason = "not installed" if not _importable(library) else "no CUDA device"
    log.debug("%s backend: %s %s, using %s", kind, library, reason, torch_path)  # MEGAVG_LOG_LEVEL=DEBUG


def _resolve(choice: str, gpu_name: str, library: str, kind: str, torch_name: str) -> str:
    available = _importable(library) and _device_present()
    if choice == gpu_name and not available:
        raise UserError(
            f"layers.{kind}: {gpu_name!r} needs {library} and a CUDA device (use 'auto' or '{torch_name}')"
        )
    if choice != "auto":
        return choice
    if available:
        return gpu_name
    _fallback_once(kind, library, torch_name)
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
