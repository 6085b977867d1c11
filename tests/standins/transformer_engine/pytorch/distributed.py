"""``te.checkpoint`` (``transformer_engine/pytorch/distributed.py: checkpoint``) on top of torch's.

Mirrored semantics:
- The FP8 state is read when the checkpointed function first runs (``fp8 = FP8GlobalStateManager.
  is_fp8_enabled(); fp8_recipe = ... get_fp8_recipe() if fp8 else None``) and the recompute in backward
  runs inside ``fp8_autocast(enabled=fp8, fp8_recipe=fp8_recipe)`` (``recompute_fn`` of the
  non-reentrant path, ``_CheckpointFunction.backward`` of the reentrant one): the recompute sees the
  same FP8 context as the forward although backward runs outside the ``autocast`` block.
- ``use_reentrant`` defaults to True; the reentrant path stores its inputs with ``save_for_backward``,
  so every positional argument must be a tensor or None.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint

from transformer_engine.pytorch.fp8 import FP8GlobalStateManager, autocast


def checkpoint(function: Callable, *args: Any, **kwargs: Any) -> Any:
    """Recompute ``function(*args, **kwargs)`` in backward, inside the forward's FP8 context."""
    use_reentrant = kwargs.pop("use_reentrant", True)
    kwargs.pop("distribute_saved_activations", False)
    kwargs.pop("get_rng_state_tracker", None)
    kwargs.pop("tp_group", None)
    if use_reentrant:
        bad = [type(a).__name__ for a in args if a is not None and not isinstance(a, torch.Tensor)]
        if bad:
            raise TypeError(f"save_for_backward can only save variables, but argument is {bad[0]}")
    fp8 = FP8GlobalStateManager.is_fp8_enabled()
    recipe = FP8GlobalStateManager.get_fp8_recipe() if fp8 else None

    def recompute_ctx() -> contextlib.AbstractContextManager:
        return autocast(enabled=fp8, recipe=recipe)

    run = functools.partial(function, **kwargs)
    if use_reentrant:

        def replay(*inputs):
            with recompute_ctx() if torch.is_grad_enabled() else contextlib.nullcontext():
                return run(*inputs)

        return torch.utils.checkpoint.checkpoint(replay, *args, use_reentrant=True)
    return torch.utils.checkpoint.checkpoint(
        run, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), recompute_ctx())
    )
