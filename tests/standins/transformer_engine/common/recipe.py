"""FP8 recipes, as ``transformer_engine/common/recipe.py`` defines them (the fields megavg sets).

Mirrored rules:
- ``Format``: E4M3 (max 448), E5M2 (max 57344), HYBRID = E4M3 forward, E5M2 backward.
- ``DelayedScaling.__post_init__`` / ``Float8CurrentScaling.__post_init__`` assert
  ``fp8_format != Format.E5M2`` ("Pure E5M2 training is not supported").
- ``DelayedScaling``: ``amax_compute_algo`` is ``"max"``, ``"most_recent"`` or a callable;
  ``amax_history_len`` > 0 (the history buffer is allocated with that length).
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any


class Format(Enum):
    """FP8 formats: (forward format, backward format)."""

    E4M3 = ("E4M3", "E4M3")
    E5M2 = ("E5M2", "E5M2")
    HYBRID = ("E4M3", "E5M2")

    @property
    def forward(self) -> str:
        return self.value[0]

    @property
    def backward(self) -> str:
        return self.value[1]


def _check_format(fmt: Any) -> None:
    if not isinstance(fmt, Format):
        raise TypeError(f"fp8_format must be a transformer_engine.common.recipe.Format, got {fmt!r}")
    assert fmt != Format.E5M2, "Pure E5M2 training is not supported."


@dataclasses.dataclass
class DelayedScaling:
    """Scaling factors from an amax history of past iterations."""

    margin: int = 0
    fp8_format: Format = Format.HYBRID
    amax_history_len: int = 1024
    amax_compute_algo: Any = "max"
    reduce_amax: bool = True

    def __post_init__(self) -> None:
        _check_format(self.fp8_format)
        assert self.amax_history_len > 0, "amax_history_len must be positive"
        assert callable(self.amax_compute_algo) or self.amax_compute_algo in ("max", "most_recent"), (
            f"unsupported amax_compute_algo {self.amax_compute_algo!r}"
        )

    def delayed(self) -> bool:
        return True


@dataclasses.dataclass
class Float8CurrentScaling:
    """Per-tensor scaling factors from the tensor's own amax (each GEMM)."""

    fp8_format: Format = Format.HYBRID

    def __post_init__(self) -> None:
        _check_format(self.fp8_format)

    def delayed(self) -> bool:
        return False
