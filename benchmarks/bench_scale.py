"""Per-rank peak host memory from load to export, against the size of the model, at 1, 2 and 4 processes.

    python benchmarks/bench_scale.py [--preset wan2.1-t2v-1.3b --dtype fp32 --ranks 1 2 4 --shard-mib 1024]

Writes the preset once with random weights as a sharded ``model.init`` folder (on disk, under ``runs/``;
one shard in memory while writing). Then, for each process count N, launches N local gloo
ranks (ZeRO-3, ``parallel.zero_init``) that measure their peak RSS (``VmHWM``, restarted per phase with
:func:`megavg.utils.memory.reset_peak_rss`) above their RSS before the phase:

- ``load``: the task builds the model under ``zero.Init`` and reads ``model.init`` (sliced: each rank its
  partitions). Goal: at most 1/N of the model + 10% of it.
- ``train``: ``deepspeed.initialize`` and ``--steps`` optimizer steps at a tiny token count (one latent
  frame of 4x4, 8 text tokens), checkpoint at the end. Only ``--trainable`` parameters train (default the
  phase-2 set: patch embedder + output linear), so the optimizer states (5x the trained weights in fp32
  Adam: master, gradient, two moments) stay small; full fine-tuning adds about 4/N of the model in
  optimizer state on top, beyond this benchmark's 24 GiB machine for the 1.3B preset.
- ``export``: one process consolidating the run's checkpoint to a model folder (``tools/consolidate.py``),
  frozen weights from ``model.init``. Goal: one output shard + one tensor.

Each row reports the largest rank's peak above its baseline (RSS after imports and process-group set-up:
the fixed overhead not counted), in MiB and as a fraction of the model; the train peak includes the
partitions loaded before it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from megavg.models import registry
from megavg.utils.memory import peak_rss_mib, reset_peak_rss, rss_mib
from megavg.utils.schema import to_dict

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# DeepSpeed keeps up to 1e9 gathered parameters alive for reuse by default: device memory on a GPU, but
# host memory here, where it would hide the partitioned state. Release each layer after use instead.
LIVE_LIMITS = {"stage3_max_live_parameters": int(5e7), "stage3_max_reuse_distance": 0,
               "stage3_prefetch_bucket_size": int(1e7)}  # fmt: skip
REPO = Path(__file__).resolve().parents[1]


class RandomTensor:
    """A lazy tensor (``utils.lazy.materialize``) of N(0, 0.02) values, made when the writer asks for it."""

    def __init__(self, shape: torch.Size, dtype: torch.dtype) -> None:
        self.shape, self.dtype = shape, dtype

    def contiguous(self) -> torch.Tensor:
        return (torch.randn(self.shape) * 0.02).to(self.dtype)


def write_model(preset: str, dtype: torch.dtype, folder: Path) -> tuple[int, int]:
    """The preset's folder with random weights, one shard in memory (kept when it exists already);
    returns (bytes, largest tensor bytes)."""
    if not folder.is_dir():
        with torch.device("meta"):
            model = registry.build(preset)
        state = {k: RandomTensor(v.shape, dtype) for k, v in model.state_dict().items()}
        registry.save_state(registry.family_of(model.args), to_dict(model.args), state, folder)
    sizes = [v.shape.numel() * v.dtype.itemsize for v in registry.load_state_dict(folder, lazy=True).values()]
    return sum(sizes), max(sizes)


def synthetic_loader(cfg, dp_rank: int, dp_size: int, start_batch: int):
    """Tiny latent batches: one latent frame of 4x4 and 8 text tokens per sample."""
    from megavg.tasks.base import model_args

    args = model_args(cfg.model)
    gen = torch.Generator().manual_seed(dp_rank)
    while True:
        yield {
            "latents": torch.randn(cfg.data.batch_size, args.in_channels, 1, 4, 4, generator=gen),
            "text": torch.randn(cfg.data.batch_size, 8, args.text_dim, generator=gen),
        }


def rank_phases(overrides: list[str]) -> dict:
    """One rank: load and train phases; returns the extra peak MiB of each and the baseline MiB."""
    import torch.distributed as dist

    from megavg.parallel import state
    from megavg.tasks import build_task
    from megavg.train import engine, loop
    from megavg.train.config import load_config
    from megavg.train.signals import StopFlag

    cfg = load_config("configs/train/wan_flow_tiny.yaml", overrides)
    engine.init_distributed("gloo")
    state.initialize(1)
    loop.make_loader = synthetic_loader
    task = build_task(cfg)
    result = {"baseline_mib": rss_mib()}
    build = task.build_model

    def measured_build():
        dist.barrier()
        reset_peak_rss()
        model = build()
        result["load_mib"] = peak_rss_mib() - result["baseline_mib"]
        result["loaded_mib"] = rss_mib() - result["baseline_mib"]  # what stays: the partitions
        dist.barrier()
        reset_peak_rss()
        return model

    task.build_model = measured_build
    trainer = loop.Trainer(cfg, task)
    assert trainer.run(StopFlag()) == 0
    result["train_mib"] = peak_rss_mib() - result["baseline_mib"]
    trainer.close()
    dist.barrier()
    state.shutdown()
    return result


def export_phase(run_dir: str, out: str, shard_mib: int) -> dict:
    from megavg.train.consolidate import consolidate

    registry.MAX_SHARD_BYTES = shard_mib * 2**20
    before = rss_mib()
    reset_peak_rss()
    consolidate(run_dir, out)
    return {"export_mib": peak_rss_mib() - before, "baseline_mib": before}


def run_ranks(n: int, model: Path, tmp: Path, opts) -> list[dict]:
    """Launch ``n`` ranks on the model folder; their results, then the export of their checkpoint."""
    run_dir, results = tmp / f"run{n}", tmp / f"results{n}"
    results.mkdir()
    overrides = [
        f"model.init={model}", f"run.dir={run_dir}", f"schedule.steps={opts.steps}",
        f"model.trainable={json.dumps(opts.trainable)}", "parallel.zero_init=true", "data.batch_size=1",
        "logging.tensorboard=false", "checkpoint.every=0", "checkpoint.exclude_frozen=true",
        f"parallel.deepspeed=configs/deepspeed/zero3_{opts.dtype}.json",
        *(f"parallel.deepspeed_overrides.zero_optimization.{k}={v}" for k, v in LIVE_LIMITS.items()),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_SCALE_OUT": str(results)}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_addr=127.0.0.1",
           f"--master_port={29500 + n}", __file__, "--rank-phases", *overrides]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    rows = [json.loads(p.read_text()) for p in sorted(results.glob("rank*.json"))]
    cmd = [
        sys.executable,
        __file__,
        "--shard-mib",
        str(opts.shard_mib),
        "--export",
        str(run_dir),
        str(tmp / "out"),
    ]
    proc = subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True, text=True)
    export = json.loads(proc.stdout.strip().splitlines()[-1])  # the last line: DeepSpeed prints too
    subprocess.run(["rm", "-rf", str(run_dir), str(tmp / "out")], check=True)
    return rows, export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="wan2.1-t2v-1.3b")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--shard-mib", type=int, default=1024)
    parser.add_argument("--model", help="model folder to use (written first when missing; default temporary)")
    parser.add_argument("--trainable", nargs="+", default=["patch_embed.*", "head.linear.*"])
    parser.add_argument("--rank-phases", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--export", nargs=2, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.rank_phases is not None:
        result = rank_phases(opts.rank_phases)
        Path(os.environ["BENCH_SCALE_OUT"], f"rank{os.environ['RANK']}.json").write_text(json.dumps(result))
        return
    if opts.export:
        print(json.dumps(export_phase(*opts.export, opts.shard_mib)))
        return
    Path("runs").mkdir(exist_ok=True)  # on disk (a tmpfs /tmp would hold the files in RAM), git-ignored
    with tempfile.TemporaryDirectory(prefix="bench_scale-", dir="runs") as name:
        tmp = Path(name)
        registry.MAX_SHARD_BYTES = opts.shard_mib * 2**20
        model = Path(opts.model) if opts.model else tmp / "model"
        size, largest = write_model(opts.preset, DTYPES[opts.dtype], model)
        measured = {}
        for n in opts.ranks:
            measured[n] = run_ranks(n, model, tmp, opts)
            print_table(opts, size / 2**20, largest / 2**20, measured)  # so far (a long run may be cut)
            sys.stdout.flush()


def print_table(opts, model_mib: float, tensor_mib: float, measured: dict) -> None:
    trainable = " ".join(opts.trainable)
    print(f"{opts.preset} {opts.dtype}: model {model_mib:,.0f} MiB, {opts.shard_mib} MiB shards, largest")
    print(f"tensor {tensor_mib:,.0f} MiB; trainable {trainable}; {opts.steps} steps")
    head = ("N", "phase", "peak MiB", "x model", "goal", "baseline MiB", "kept MiB")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (2, 6, 9, 8, 6, 13, 9))))

    def row(n: int, phase: str, mib: float, goal: float, baseline: float, kept: str = "") -> None:
        line = f"{n:>2} {phase:>6} {mib:>9,.0f} {mib / model_mib:>8.3f} {goal:>6.3f} {baseline:>13,.0f}"
        print(f"{line} {kept:>9}")

    for n, (ranks, export) in measured.items():
        worst = max(ranks, key=lambda r: r["load_mib"])
        row(n, "load", worst["load_mib"], 1 / n + 0.1, worst["baseline_mib"], f"{worst['loaded_mib']:,.0f}")
        worst = max(ranks, key=lambda r: r["train_mib"])
        row(n, "train", worst["train_mib"], 1 / n + 0.1, worst["baseline_mib"])
        goal = (opts.shard_mib + tensor_mib) / model_mib
        row(n, "export", export["export_mib"], goal, export["baseline_mib"])
    print("peak: the largest rank's peak RSS in the phase above its baseline (RSS after imports and process")
    print(
        "groups); kept: RSS above the baseline after loading (the partitions). Goal: load/train <= 1/N + 0.1"
    )
    print("of the model; export (one process) <= one shard + one tensor.")


if __name__ == "__main__":
    main()
