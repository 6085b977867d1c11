"""The two small value types every planner module shares: the cluster run and one candidate layout."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    """Cluster and precision facts: ``world`` GPUs on ``nodes`` nodes, compute dtype of ``c`` bytes
    (2 bf16, 4 fp32), FP8 linears, assumed FLOPs utilisation ``mfu``."""

    world: int
    nodes: int
    c: int
    fp8: bool = False
    mfu: float = 0.35


@dataclass(frozen=True)
class Layout:
    """One way to run: Ulysses SP degree, per-block activation checkpointing, DeepSpeed JSON."""

    sp: int
    checkpointing: bool
    deepspeed: str


def offloads(ds: dict) -> tuple[bool, bool]:
    """(optimizer offloaded, parameters offloaded) in a DeepSpeed config dict."""
    zero = ds.get("zero_optimization", {})
    return "offload_optimizer" in zero, "offload_param" in zero
