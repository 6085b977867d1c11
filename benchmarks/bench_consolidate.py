"""Export memory from a ZeRO-3 checkpoint: megavg's streaming reader vs DeepSpeed's lazy ``zero_to_fp32``.

    python benchmarks/bench_consolidate.py [--gib 1 --tensor-mib 64 --shard-mib 256 --worlds 1 2 4]

Writes, for each world size N, a checkpoint tag in DeepSpeed 0.19's ZeRO-3 file layout (per rank: the
fp32 flat partition and Adam's two moments in ``*_optim_states.pt``, ``param_shapes`` in
``*_model_states.pt``; parameters cut into N zero-padded chunks; see :mod:`megavg.train.zero_checkpoint`)
holding ``--gib`` of fp32 weights in tensors of about ``--tensor-mib``. The files are written here, not by a
training run, so that a model bigger than what fits on this machine's training processes can be measured;
that the layout is DeepSpeed's is tested against real checkpoints (tests/distributed/test_elastic.py).

Then, in a fresh subprocess per (mode, N), the weights are written as a model folder with
``registry.save_state`` (``--shard-mib`` shards):

- ``stream``: :class:`megavg.train.zero_checkpoint.ZeroCheckpoint` lazy tensors (``tools/consolidate.py``);
- ``deepspeed``: DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint(lazy_mode=True)`` (what
  ``tools/consolidate.py`` used before): memory-mapped too, but every page it reads stays resident.

Memory is the subprocess's peak RSS (``VmHWM``, :mod:`megavg.utils.memory`) minus its RSS before reading;
it includes file pages mapped and touched. Target for ``stream``: one output shard plus one tensor,
whatever N and the model size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch

from megavg.models import registry
from megavg.train.zero_checkpoint import partition_numel
from megavg.utils.memory import peak_rss_mib, rss_mib


def shapes(gib: float, tensor_mib: int) -> OrderedDict[str, torch.Size]:
    """Weights of ``gib`` GiB: square-ish matrices of ``tensor_mib`` plus an odd-sized bias each (padding)."""
    cols = 1024
    rows = tensor_mib * 2**20 // 4 // cols
    count = max(1, int(gib * 1024 / tensor_mib))
    out: OrderedDict[str, torch.Size] = OrderedDict()
    for i in range(count):
        out[f"blocks.{i}.weight"] = torch.Size([rows, cols])
        out[f"blocks.{i}.bias"] = torch.Size([rows + 1])
    return out


def full_tensor(index: int, numel: int) -> torch.Tensor:
    return torch.randn(numel, generator=torch.Generator().manual_seed(index))


def write_zero3(tag_dir: Path, params: OrderedDict[str, torch.Size], world: int) -> None:
    """Rank files of one sub-group in DeepSpeed's ZeRO-3 layout (moments: scaled copies of the weights)."""
    tag_dir.mkdir(parents=True)
    model = {"param_shapes": [params], "buffer_names": [], "module": {}, "frozen_param_shapes": None,
             "frozen_param_fragments": None, "shared_params": {}, "ds_version": "0.19.8"}  # fmt: skip
    for rank in range(world):
        pieces = []
        for index, shape in enumerate(params.values()):
            chunk = partition_numel(shape.numel(), world)
            padded = torch.nn.functional.pad(
                full_tensor(index, shape.numel()), (0, chunk * world - shape.numel())
            )
            pieces.append(padded[rank * chunk : (rank + 1) * chunk].clone())
        flat = torch.cat(pieces)
        del pieces
        adam = {"step": torch.tensor(10.0), "exp_avg": flat * 0.1, "exp_avg_sq": flat.square()}
        inner = {"state": {0: adam}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
        optim = {
            "zero_stage": 3,
            "partition_count": world,
            "optimizer_state_dict": inner,
            "fp32_flat_groups": [flat],
        }
        torch.save(
            {"optimizer_state_dict": optim, "ds_version": "0.19.8"},
            tag_dir / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
        )
        torch.save(model, tag_dir / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")


def measure(mode: str, tag_dir: str, out: str, shard_mib: int) -> dict:
    """Write the checkpoint's weights to the model folder ``out`` in this process; peak MiB and seconds."""
    registry.MAX_SHARD_BYTES = shard_mib * 2**20
    before = rss_mib()
    start = time.perf_counter()
    if mode == "stream":
        from megavg.train.zero_checkpoint import ZeroCheckpoint

        state = ZeroCheckpoint(tag_dir).state_dict()
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        folder = Path(tag_dir)
        state = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), folder.name, lazy_mode=True)
    registry.save_state("wan", {}, state, out)
    return {"extra_mib": peak_rss_mib() - before, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--tensor-mib", type=int, default=64)
    parser.add_argument("--shard-mib", type=int, default=256)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--measure", nargs=3, metavar=("MODE", "TAG", "OUT"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.measure:
        print(json.dumps(measure(*opts.measure, opts.shard_mib)))
        return
    params = shapes(opts.gib, opts.tensor_mib)
    size_mib = sum(s.numel() for s in params.values()) * 4 / 2**20
    rows = []
    for world in opts.worlds:
        with tempfile.TemporaryDirectory(dir=".") as tmp:  # on disk: a tmpfs /tmp would hold the files in RAM
            tag = Path(tmp) / "checkpoints" / "step_00000001"
            write_zero3(tag, params, world)
            for mode in ("deepspeed", "stream"):
                cmd = [sys.executable, __file__, "--shard-mib", str(opts.shard_mib), "--measure", mode]
                cmd += [str(tag), str(Path(tmp) / mode)]
                result = json.loads(
                    subprocess.run(cmd, check=True, capture_output=True).stdout.splitlines()[-1]
                )
                rows.append((world, mode, result))
    print(
        f"{size_mib:,.0f} MiB of fp32 weights, tensors of {opts.tensor_mib} MiB, {opts.shard_mib} MiB shards"
    )
    head = f"{'ranks':>5} {'mode':>10} {'extra peak MiB':>15} {'x model':>8} {'x (shard+tensor)':>17}"
    print(f"{head} {'seconds':>8}")
    for world, mode, r in rows:
        mib = r["extra_mib"]
        ratios = f"{mib / size_mib:>8.2f} {mib / (opts.shard_mib + opts.tensor_mib):>17.2f}"
        print(f"{world:>5} {mode:>10} {mib:>15,.0f} {ratios} {r['seconds']:>8.1f}")


if __name__ == "__main__":
    main()
