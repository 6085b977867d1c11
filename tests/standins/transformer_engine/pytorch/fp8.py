"""FP8 global state and autocast, as ``transformer_engine/pytorch/fp8.py`` (``quantization.py`` in TE
>= 2.8) keeps them.

What the real ``FP8GlobalStateManager`` keeps, and when (mirrored here):
- ``FP8_ENABLED``, ``FP8_RECIPE``, ``FP8_DISTRIBUTED_GROUP``, ``FP8_CALIBRATION`` are set on entering
  ``autocast`` (``fp8_autocast_enter``) and the previous values restored on exit
  (``set_fp8_autocast_state(fp8_state)`` in the ``finally`` of ``autocast``): nesting works, and
  nothing of the FP8 context survives the ``with`` block - in particular not into backward or into an
  activation recompute run later (TE's own ``checkpoint`` re-enters it, see ``distributed.py``).
- ``recipe=None`` means ``get_default_fp8_recipe()`` (DelayedScaling on Hopper).
- ``te.fp8_autocast(enabled, calibrating, fp8_recipe, fp8_group)`` is deprecated since TE 2.9 in favour
  of ``te.autocast(enabled, calibrating, recipe, amax_reduction_group)``; it warns and forwards.
- Delayed scaling reduces the forward amaxes of every FP8 module that ran inside the region over
  ``amax_reduction_group`` once, when the outermost ``autocast`` exits with grad enabled
  (``quantization.py: autocast_exit`` -> ``reduce_and_update_fp8_tensors(forward=True)``, a no-op for
  other recipes whose amax buffer stays empty). Counted here in ``AMAX_REDUCTIONS`` (one all-reduce per
  count on a GPU; the stand-in issues no collective).
Not emulated: the delayed-scaling amax history (each GEMM is quantised with its current amax).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from transformer_engine.common.recipe import DelayedScaling, Float8CurrentScaling

RECIPES = (DelayedScaling, Float8CurrentScaling)


class FP8GlobalStateManager:
    """Class-level FP8 state, as in TE (no instances)."""

    FP8_ENABLED = False
    FP8_CALIBRATION = False
    FP8_RECIPE: Any = None
    FP8_DISTRIBUTED_GROUP: Any = None
    AUTOCAST_DEPTH = 0
    REGION_FP8_GEMMS = 0  # FP8 GEMMs run since the outermost autocast was entered
    AMAX_REDUCTIONS = 0  # forward amax all-reduces delayed scaling would have issued

    @classmethod
    def record_fp8_gemm(cls) -> None:
        cls.REGION_FP8_GEMMS += 1

    @classmethod
    def is_fp8_enabled(cls) -> bool:
        return cls.FP8_ENABLED

    @classmethod
    def get_fp8_recipe(cls) -> Any:
        return cls.FP8_RECIPE if cls.FP8_RECIPE is not None else DelayedScaling()

    @classmethod
    def get_fp8_group(cls) -> Any:
        return cls.FP8_DISTRIBUTED_GROUP

    @classmethod
    def get_autocast_state(cls) -> tuple:
        return (cls.FP8_ENABLED, cls.FP8_CALIBRATION, cls.FP8_RECIPE, cls.FP8_DISTRIBUTED_GROUP)

    @classmethod
    def set_autocast_state(cls, state: tuple) -> None:
        cls.FP8_ENABLED, cls.FP8_CALIBRATION, cls.FP8_RECIPE, cls.FP8_DISTRIBUTED_GROUP = state


@contextlib.contextmanager
def autocast(
    enabled: bool = True, calibrating: bool = False, recipe: Any = None, amax_reduction_group: Any = None
) -> Iterator[None]:
    """FP8 region: TE modules called inside run their GEMMs in FP8 (``recipe``; default DelayedScaling)."""
    if recipe is not None and not isinstance(recipe, RECIPES):
        raise TypeError(f"autocast: recipe must be a transformer_engine recipe, got {type(recipe).__name__}")
    saved = FP8GlobalStateManager.get_autocast_state()
    FP8GlobalStateManager.set_autocast_state(
        (enabled, calibrating, recipe if recipe is not None else DelayedScaling(), amax_reduction_group)
    )
    manager = FP8GlobalStateManager
    if manager.AUTOCAST_DEPTH == 0:
        manager.REGION_FP8_GEMMS = 0
    manager.AUTOCAST_DEPTH += 1
    try:
        yield
    finally:
        manager.AUTOCAST_DEPTH -= 1
        delayed = isinstance(manager.get_fp8_recipe(), DelayedScaling)
        if enabled and manager.AUTOCAST_DEPTH == 0 and torch.is_grad_enabled() and delayed:
            if manager.REGION_FP8_GEMMS:  # the amax buffer holds this region's modules
                manager.AMAX_REDUCTIONS += 1
        manager.set_autocast_state(saved)


def fp8_autocast(
    enabled: bool = True, calibrating: bool = False, fp8_recipe: Any = None, fp8_group: Any = None
) -> contextlib.AbstractContextManager:
    """Deprecated (TE 2.9) name of :func:`autocast`."""
    warnings.warn(
        "fp8_autocast is deprecated and will be removed in a future release. Use autocast instead.",
        DeprecationWarning,
        stacklevel=2,
    )
    return autocast(
        enabled=enabled, calibrating=calibrating, recipe=fp8_recipe, amax_reduction_group=fp8_group
    )
