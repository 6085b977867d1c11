"""Export memory: a model folder written from lazy tensors (one shard in memory) vs from a full state dict.

    python benchmarks/bench_export.py [--preset wan2.1-t2v-1.3b --dtype bf16 --shard-mib 512]

Builds the preset with random weights once and writes it as a sharded source folder. Then, in a fresh
subprocess per mode, re-writes it with ``registry.save_state``:

- ``eager``: the whole source is read into memory first (what ``tools/consolidate.py`` did before it kept
  DeepSpeed's lazy tensors lazy, and how it read ``model.init``);
- ``lazy``: the source is passed as :class:`megavg.models.registry.StoredTensor` entries, materialised one
  output shard at a time, as ``tools/consolidate.py`` now does with ``model.init`` and DeepSpeed's lazy mode.

Memory is the subprocess's peak RSS (``megavg.utils.memory``) minus its RSS before reading. Target:
lazy holds about one or two shards (the one being written, plus what the allocator keeps for reuse),
not the model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from megavg.models import build, registry
from megavg.utils.memory import peak_rss_mib, rss_mib

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def measure(mode: str, source: str, out: str, shard_mib: int) -> dict:
    """Re-write ``source`` to ``out`` in this process; returns extra peak MiB and seconds."""
    registry.MAX_SHARD_BYTES = shard_mib * 2**20
    config = registry.read_config(source)
    before = rss_mib()
    start = time.perf_counter()
    state = registry.load_state_dict(source, lazy=(mode == "lazy"))
    registry.save_state(config["family"], config["args"], state, out)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    return {"extra_mib": peak - before, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="wan2.1-t2v-1.3b")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--shard-mib", type=int, default=512)
    parser.add_argument("--measure", nargs=3, metavar=("MODE", "SOURCE", "OUT"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.measure:
        print(json.dumps(measure(*opts.measure, opts.shard_mib)))
        return
    with tempfile.TemporaryDirectory(dir=".") as tmp:  # on disk: a tmpfs /tmp would hold the files in RAM
        torch.set_default_dtype(DTYPES[opts.dtype])
        model = build(opts.preset)
        torch.set_default_dtype(torch.float32)
        registry.MAX_SHARD_BYTES = opts.shard_mib * 2**20
        model.save(Path(tmp) / "source")
        size_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        del model
        rows = []
        for mode in ("eager", "lazy"):
            cmd = [sys.executable, __file__, "--shard-mib", str(opts.shard_mib), "--measure", mode]
            cmd += [str(Path(tmp) / "source"), str(Path(tmp) / mode)]
            rows.append((mode, json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)))
    print(f"{opts.preset} {opts.dtype}: {size_mib:,.0f} MiB of weights, {opts.shard_mib} MiB shards")
    print(f"{'mode':>6} {'extra peak MiB':>15} {'x model':>8} {'x shard':>8} {'seconds':>8}")
    for mode, r in rows:
        mib = r["extra_mib"]
        ratios = f"{mib / size_mib:>8.2f} {mib / opts.shard_mib:>8.2f}"
        print(f"{mode:>6} {mib:>15,.0f} {ratios} {r['seconds']:>8.1f}")
    print(f"lazy / eager peak: {rows[1][1]['extra_mib'] / rows[0][1]['extra_mib']:.2f}x")


if __name__ == "__main__":
    main()
