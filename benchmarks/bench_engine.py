"""Engine benchmark: ZeRO-3 memory per rank against 1/N, activation memory against SP degree, tokens/s.

    python benchmarks/bench_engine.py [--layers 4 --dim 256 --frames 4 --size 32 --steps 3]

Launches itself under ``torchrun`` for each layout (world size = DP x SP) with a Wan DiT (flow matching,
fp32 ZeRO-3 through the real engine pieces: ``megavg.train.engine``, ``megavg.parallel.state``, the
``flow_matching`` task) and prints one table. Columns:

- ``param+optim MiB/rank``: bytes this rank holds of fp32 parameter and gradient partitions, fp32 master
  partitions and Adam moments after one step; ``ideal`` is the unpartitioned total / N.
- ``activations MiB/rank``: bytes of the tensors autograd saves for backward in one forward (deduplicated
  by storage) at a fixed sequence length; Ulysses SP should divide the token-proportional part by SP.
- ``tokens/s``: global latent tokens per second over ``--steps`` optimizer steps (after a warm-up step).

On this CPU machine the ranks share two cores, so tokens/s measures overhead, not scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = [(1, 1), (2, 1), (4, 1), (1, 2), (1, 4)]  # (dp, sp)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--frames", type=int, default=4, help="latent frames")
    parser.add_argument("--size", type=int, default=32, help="latent height = width")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # result file: run one layout
    parser.add_argument("--sp", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def config(args: argparse.Namespace):
    from megavg.train.config import load_config

    model_args = f"{{dim: {args.dim}, num_heads: 4, ffn_dim: {4 * args.dim}, num_layers: {args.layers}}}"
    return load_config(
        None,
        [
            "task.name=flow_matching",
            "model.preset=wan-tiny-t2v",
            f"model.args={model_args}",
            f"parallel.sp_size={args.sp}",
            f"parallel.deepspeed={REPO / 'configs/deepspeed/zero3_fp32.json'}",
        ],
    )


def saved_activation_bytes(fn) -> int:
    """Run ``fn`` and sum the storage bytes autograd saves for backward (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if t.device.type != "meta" and t.untyped_storage().nbytes():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def worker(args: argparse.Namespace) -> None:
    from megavg.parallel import state
    from megavg.tasks import task_module
    from megavg.tasks.base import StepContext
    from megavg.train import engine as ds_engine
    from megavg.train.loop import micro_generator
    from megavg.utils.schema import from_dict

    cfg = config(args)
    module = task_module("flow_matching")
    task = module.Task(from_dict(module.Args, {}), cfg)
    ds_engine.init_distributed("auto")
    state.initialize(args.sp)
    torch.manual_seed(0)
    model = task.build_model()
    full_bytes = 20 * sum(p.numel() for p in model.parameters())  # fp32 param, grad, master, 2 Adam moments
    sp_group = state.get_sequence_parallel_group() if args.sp > 1 else None
    if sp_group is not None:
        model = task.parallelize(model, sp_group)
    engine = ds_engine.initialize(cfg, model, list(model.parameters()))
    dev, dp_rank = ds_engine.device(), state.get_data_parallel_rank()
    gen = torch.Generator().manual_seed(dp_rank)
    batch = {
        "latents": torch.randn(1, 4, args.frames, args.size, args.size, generator=gen),
        "text": torch.randn(1, 8, 32, generator=gen),
    }

    def step(i: int, measure: bool = False) -> int:
        ctx = StepContext(i, micro_generator(0, i, dp_rank), dev, torch.float32, sp_group)
        saved, terms = saved_activation_bytes(lambda: task.loss(engine, batch, ctx))
        engine.backward(terms["loss"] * args.sp)
        engine.step()
        return saved

    activations = step(0)
    start = time.perf_counter()
    for i in range(args.steps):
        step(i + 1)
    seconds = time.perf_counter() - start
    dp = state.get_data_parallel_world_size()
    result = {
        "world": int(os.environ["WORLD_SIZE"]),
        "dp": dp,
        "sp": args.sp,
        "mem": ds_engine.partition_bytes(engine),
        "ideal": full_bytes / int(os.environ["WORLD_SIZE"]),
        "act": activations,
        "tokens_per_s": dp * task.tokens(batch) * args.steps / seconds,
    }
    if int(os.environ["RANK"]) == 0:
        Path(args.worker).write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: argparse.Namespace, dp: int, sp: int, out: Path) -> dict:
    port = f"--master_port={free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={dp * sp}", port]
    cmd += [__file__, "--worker", str(out), "--sp", str(sp)]
    cmd += ["--layers", str(args.layers), "--dim", str(args.dim), "--frames", str(args.frames)]
    cmd += ["--size", str(args.size), "--steps", str(args.steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(f"layout dp={dp} sp={sp} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    tokens = args.frames * (args.size // 2) ** 2
    print(f"Wan DiT dim={args.dim} layers={args.layers}, {tokens} tokens/sample, fp32 ZeRO-3, "
          f"device={'cuda' if torch.cuda.is_available() else 'cpu (gloo)'}")  # fmt: skip
    header = f"{'ranks':>5} {'dp':>3} {'sp':>3} {'param+optim MiB/rank':>21} {'ideal 1/N':>10} "
    header += f"{'ratio':>6} {'activations MiB/rank':>21} {'tokens/s':>9}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for dp, sp in LAYOUTS:
            r = launch(args, dp, sp, Path(tmp) / f"dp{dp}_sp{sp}.json")
            mib = 2**20
            print(
                f"{r['world']:>5} {dp:>3} {sp:>3} {r['mem'] / mib:>21.2f} {r['ideal'] / mib:>10.2f} "
                f"{r['mem'] / r['ideal']:>6.2f} {r['act'] / mib:>21.2f} {r['tokens_per_s']:>9.0f}"
            )


if __name__ == "__main__":
    main()
