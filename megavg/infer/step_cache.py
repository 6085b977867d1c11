"""Step caching for the Wan DiT: skip the block stack on steps whose input barely moved.

    cache = StepCache("fbcache", threshold=0.05)
    model(x, t, None, context=ctx, step_cache=cache)   # once per denoising step (per CFG branch)

Both methods keep, per batch row (so per CFG branch), the residual the block stack added the last time
it ran, and reuse it on a step where a cheap probe changed relatively little:

- ``fbcache`` (First-Block Cache): run block 0; the probe is its residual ``block0(x) - x``. Compared
  with the probe of the last fully computed step: ``mean|now - then| / mean|then|``. Under the
  threshold, blocks 1.. are skipped and their cached residual is added to block 0's output.
- ``teacache`` (TeaCache, without its fitted rescaling polynomial): the probe is block 0's
  timestep-modulated input; its relative change from the previous step is *accumulated* over skipped
  steps, and the whole stack is skipped while the sum stays under the threshold (then the sum resets).

The first call always computes. A batch skips only when every row is under the threshold (a batched
CFG call holds both branches; sequential or CFG-parallel calls decide per branch). With sequence
parallelism the probe's sums are reduced over ``group`` so all ranks decide alike. Deciding costs one
host sync per step, so caching is off by default and never part of the exact path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from megavg.utils.errors import UserError

METHODS = ("none", "fbcache", "teacache")


class StepCache:
    """One cache for one sequence of model calls (one CFG branch, or one batched CFG call per step)."""

    def __init__(self, method: str, threshold: float, group=None):
        if method not in METHODS[1:]:
            raise UserError(f"step cache: unknown method {method!r} (choose from {', '.join(METHODS)})")
        if threshold < 0:
            raise UserError(f"step cache: threshold must be >= 0, got {threshold}")
        self.method, self.threshold, self.group = method, threshold, group
        self.probe: torch.Tensor | None = None  # reference probe (fbcache: last computed; teacache: last)
        self.residual: torch.Tensor | None = None  # what the skipped blocks added last time they ran
        self.accumulated: torch.Tensor | None = None  # teacache: summed relative change per row
        self.calls = self.skipped = 0

    def _relative_change(self, probe: torch.Tensor) -> torch.Tensor:
        """[B] mean |probe - reference| / mean |reference| per row, summed over the SP group."""
        sums = torch.stack(
            [(probe - self.probe).abs().flatten(1).sum(1), self.probe.abs().flatten(1).sum(1)]
        ).float()  # [2, B]
        if self.group is not None and dist.get_world_size(self.group) > 1:
            dist.all_reduce(sums, group=self.group)
        return sums[0] / sums[1].clamp_min(torch.finfo(torch.float32).tiny)

    def __call__(self, x: torch.Tensor, run: Callable, first_block, time_proj: torch.Tensor) -> torch.Tensor:
        """``run(x, start, stop)`` runs blocks start:stop; returns the output of the whole stack."""
        self.calls += 1
        if self.method == "fbcache":
            return self._first_block(x, run)
        return self._tea(x, run, first_block, time_proj)

    def _first_block(self, x: torch.Tensor, run: Callable) -> torch.Tensor:
        h = run(x, 0, 1)
        probe = h - x
        if self.probe is not None and bool((self._relative_change(probe) < self.threshold).all()):
            self.skipped += 1
            return h + self.residual
        out = run(h, 1, None)
        self.probe, self.residual = probe, out - h
        return out

    def _tea(self, x: torch.Tensor, run: Callable, first_block, time_proj: torch.Tensor) -> torch.Tensor:
        probe = first_block.modulated_input(x, time_proj)
        if self.probe is not None:
            change = self._relative_change(probe)
            self.accumulated = change if self.accumulated is None else self.accumulated + change
            self.probe = probe
            if bool((self.accumulated < self.threshold).all()):
                self.skipped += 1
                return x + self.residual
        self.probe, self.accumulated = probe, None
        out = run(x, 0, None)
        self.residual = out - x
        return out
