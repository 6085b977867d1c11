"""The per-stage table ``generate`` prints: wall time and peak memory of each stage of a generation."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from megavg.utils.logging import plural
from megavg.utils.memory import peak_rss_mib, reset_peak_rss


@dataclass
class StageLog:
    """Wall time and peak memory (GPU: allocated; CPU: resident set) of each stage."""

    device: torch.device
    rows: list[tuple[str, float, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()
        start = time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = peak_rss_mib()
        self.rows.append((name, time.perf_counter() - start, peak))

    def seconds(self, name: str) -> float:
        """Wall time of the stage called ``name``."""
        return next(sec for stage, sec, _ in self.rows if stage == name)

    def report(self) -> str:
        kind = "GPU allocated" if self.device.type == "cuda" else "host RSS"
        width = max([len("stage"), *(len(name) for name, _, _ in self.rows)]) + 2
        lines = [f"{'stage':<{width}}{'seconds':>10}{'peak MiB':>12}  ({kind})"]
        lines += [f"{name:<{width}}{sec:>10.2f}{peak:>12.0f}" for name, sec, peak in self.rows]
        return "\n".join(lines)


def denoise_summary(stage_s: float, steps: int, stats: dict, compiled: bool = False) -> str:
    """The denoise stage split into its step loop (first step, then the mean of the others) and what ran
    around the loop (moving the DiT, preparing the text, the final cast): the parts add up to the stage."""
    loop = stats["first_step_s"] + stats["step_s"] * (steps - 1)
    first = f"first {stats['first_step_s']:.3f} s{', compile included' if compiled else ''}"
    then = f", then {stats['step_s']:.3f} s each" if steps > 1 else ""
    return (f"denoise {stage_s:.2f} s = {plural(steps, 'step')} {loop:.2f} s ({first}{then}) "
            f"+ {stage_s - loop:.2f} s around the steps; CFG {stats['mode']}")  # fmt: skip
