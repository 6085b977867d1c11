"""Activation checkpointing behind one call: Transformer Engine's checkpoint when the linears are TE,
torch's otherwise.

TE's ``checkpoint`` records the FP8 state when the block runs and recomputes it in backward inside
the same ``autocast`` (``transformer_engine/pytorch/distributed.py``); ``torch.utils.checkpoint``
recomputes outside it (backward runs after the ``autocast`` block has exited), so the recompute would
run in bf16 and save other tensors than the FP8 forward did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.utils.checkpoint

from megavg.layers.backends import resolve_linear


def recompute(function: Callable, *args: Any, linear: str) -> Any:
    """``function(*args)``, its activations recomputed in backward; ``linear``: the layers' backend."""
    if resolve_linear(linear) == "te":
        import transformer_engine.pytorch as te  # GPU path

        return te.checkpoint(function, *args, use_reentrant=False)
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)
