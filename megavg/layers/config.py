"""Per-run choice of layer backends (Transformer Engine or torch linears, flash-attn or SDPA) and FP8.

These are not part of a model's identity: the same weights run with any backend. ``"auto"`` picks the GPU
library when it is importable and CUDA is present, and otherwise falls back to torch with one log line;
naming a backend explicitly makes its absence an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from megavg.utils.errors import UserError


@dataclass
class Fp8Config:
    """Transformer Engine FP8 settings (used only with the ``te`` linear backend).

    ``recipe``: ``delayed`` (DelayedScaling, amax history) or ``current`` (Float8CurrentScaling).
    ``format``: ``hybrid`` (E4M3 forward, E5M2 backward) or ``e4m3``.
    ``bf16_first_blocks`` / ``bf16_last_blocks``: transformer blocks kept out of FP8 at either end (the
    embeddings and the output head are never FP8). Mixing FP8 and bf16 blocks needs current scaling.
    ``reset_amax_on_load``: drop saved FP8 scaling state (TE ``_extra_state``) when loading a checkpoint,
    so a resumed run starts its amax history fresh instead of inheriting a mismatched one.
    """

    enabled: bool = False
    recipe: Literal["delayed", "current"] = "current"
    format: Literal["hybrid", "e4m3"] = "hybrid"
    amax_history_len: int = 1024
    amax_compute_algo: Literal["max", "most_recent"] = "max"
    margin: int = 0
    bf16_first_blocks: int = 1
    bf16_last_blocks: int = 1
    reset_amax_on_load: bool = True

    def __post_init__(self) -> None:
        if self.amax_history_len < 1:
            raise UserError(f"fp8.amax_history_len must be >= 1, got {self.amax_history_len}")
        if self.bf16_first_blocks < 0 or self.bf16_last_blocks < 0:
            raise UserError("fp8.bf16_first_blocks / bf16_last_blocks must be >= 0")
        mixed = self.bf16_first_blocks > 0 or self.bf16_last_blocks > 0
        if self.enabled and self.recipe == "delayed" and mixed:
            raise UserError(
                "fp8: keeping first/last blocks in bf16 needs recipe 'current' "
                "(or set bf16_first_blocks = bf16_last_blocks = 0 for 'delayed')"
            )


@dataclass
class LayerConfig:
    """Which implementation each layer kind uses for this run."""

    linear: Literal["auto", "te", "torch"] = "auto"
    attention: Literal["auto", "flash", "sdpa"] = "auto"
    fp8: Fp8Config = field(default_factory=Fp8Config)

    def __post_init__(self) -> None:
        if self.fp8.enabled and self.linear == "torch":
            raise UserError(
                "layers: fp8.enabled needs linear 'te' (or 'auto' on a GPU with Transformer Engine)"
            )


def runner_layers(layers: LayerConfig, keep_fp8: bool = False) -> LayerConfig:
    """The layer settings an exported model carries: backends picked by the machine that runs it
    (``auto``: TE/flash-attn where installed, else torch/SDPA), FP8 off unless ``keep_fp8``. A training
    run's ``linear: te`` or ``fp8.enabled`` would make the runner refuse without TE, or run FP8 silently."""
    fp8 = layers.fp8 if keep_fp8 else replace(layers.fp8, enabled=False)
    return replace(layers, linear="auto", attention="auto", fp8=fp8)
