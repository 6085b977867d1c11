"""Where the time of one denoising run goes: megavg's exact default path (``sample()``) and diffusers'
``WanPipeline`` loop, same weights and shape as ``vs_diffusers.py``, under ``torch.profiler``.

    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/profile_vs_diffusers.py --steps 3

Prints, per contender, the wall time of the profiled run and the operators with the most self CPU time
(their share of the total), so a difference between the two can be named by operator.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_diffusers as vs  # noqa: E402


def profiled(name: str, fn, top: int) -> None:
    """Run ``fn`` once under the profiler; print its wall time and top operators by self CPU time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\n{name}: {wall:.2f} s wall, {total / 1e6:.2f} s self CPU time in operators")
    print("| operator | calls | self CPU s | share |\n|---|---|---|---|")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        self_s = e.self_cpu_time_total / 1e6
        print(f"| {e.key} | {e.count} | {self_s:.3f} | {e.self_cpu_time_total / total:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="denoising steps per profiled run")
    parser.add_argument("--top", type=int, default=12, help="operators listed per contender")
    opts = parser.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:
        raise SystemExit("error: set OMP_NUM_THREADS (e.g. OMP_NUM_THREADS=2)")
    vs.STEPS = opts.steps
    ref, model = vs.make_models(torch.device("cpu"))
    noise, text, negative = vs.make_inputs(torch.device("cpu"))
    print(f"load average before: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    for name, fn in (
        ("diffusers loop", lambda: vs.diffusers_loop(ref, noise, text, negative, {})),
        ("megavg exact (sample() defaults)", lambda: vs.megavg_run(model, noise, text, negative, {})),
    ):
        fn()  # warm-up (allocator, one-time set-up)
        profiled(name, fn, opts.top)
    print(f"load average after: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
