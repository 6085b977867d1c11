"""Rank-0 metrics: tensorboard scalars, ``metrics.jsonl`` (one JSON object per logged step), status line."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megavg.utils.io import atomic_file
from megavg.utils.logging import get_logger
from megavg.utils.memory import peak_rss_mib

log = get_logger(__name__)


def peak_memory_gib() -> float:
    """Peak accelerator memory of this process (GPU), else peak resident set size (CPU), in GiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return peak_rss_mib() / 1024


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop lines of steps after ``last_step`` (logged before a crash, replayed after resume)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [line for line in lines if json.loads(line).get("step", 0) <= last_step]
    if len(keep) != len(lines):
        with atomic_file(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep))


class MetricsWriter:
    """Writes on rank 0 only (``enabled``); other ranks get a no-op writer."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, start_step: int) -> None:
        self.enabled = enabled
        self.jsonl = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        truncate_jsonl(self.jsonl, start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps({"step": step, **scalars}) + "\n")
        if self.tb is not None:
            for name, value in scalars.items():
                self.tb.add_scalar(name, value, step)
        log.info(status_line(step, scalars))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def status_line(step: int, scalars: dict[str, float]) -> str:
    """``step 12 | loss 0.1234 | lr 1.00e-04 | ...`` (loss terms first)."""
    parts = [f"step {step}"]
    for name, value in scalars.items():
        short = name.split("/")[-1]
        parts.append(f"{short} {value:.3e}" if abs(value) < 1e-2 and value else f"{short} {value:.4g}")
    return " | ".join(parts)
