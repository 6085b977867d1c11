"""Seconds per 16-frame clip of the FVD feature network (megavg's I3D) on this machine.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_i3d.py --i3d kinetics400 --sizes 224 112 --batch 4

For each ``--sizes`` value: one warm-up forward, then ``--rounds`` timed forwards of ``--batch`` random
clips (3 x frames x size x size in [-1, 1]); prints the median seconds per clip. ``--i3d`` takes what
``python -m megavg.eval fvd --i3d`` takes (``kinetics400`` needs the [eval] extra; ``random`` has the same
cost). Decoding and resizing are not included (they are small next to the network at 224).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from megavg.eval.i3d import load_i3d


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--i3d", default="random")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 112])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    model = load_i3d(args.i3d)
    threads = torch.get_num_threads()
    print(f"I3D ({args.i3d}), {args.frames} frames, batch {args.batch}, {threads} threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")  # fmt: skip
    print("| size | s / clip | clips / min |\n|---|---|---|")
    for size in args.sizes:
        x = torch.rand(args.batch, 3, args.frames, size, size) * 2 - 1
        times = []
        with torch.no_grad():
            model(x)
            for _ in range(args.rounds):
                start = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - start) / args.batch)
        per_clip = statistics.median(times)
        print(f"| {size} | {per_clip:.3f} | {60 / per_clip:.1f} |")


if __name__ == "__main__":
    main()
