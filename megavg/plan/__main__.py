"""``python -m megavg.plan [--config YAML] --preset P --nodes N --gpus-per-node G --gpu-memory-gib M
--size H W --frames F [--batch B] [--task adapt_lora|flow_matching|dcaev_recon] [--sp S] [--mfu U] [--fp8]
[--json]``"""

from __future__ import annotations

import argparse
import json

from megavg.plan.layouts import TASKS, Request, plan
from megavg.utils.errors import UserError, run_cli


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage dump -> one line, exit 2
        raise UserError(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m megavg.plan", description="Plan the memory and speed of a training run.")
    parser.add_argument("--config", help="plan this training YAML (its preset, task, LoRA rank...)")
    parser.add_argument("--preset", help="model preset (default: the --config's model.preset)")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus-per-node", type=int, required=True)
    parser.add_argument("--gpu-memory-gib", type=float, required=True)
    parser.add_argument("--size", type=int, nargs=2, required=True, metavar=("H", "W"), help="pixels")
    parser.add_argument("--frames", type=int, required=True, help="video frames per clip")
    parser.add_argument("--batch", type=int, default=1, help="micro-batch per SP group (data.batch_size)")
    parser.add_argument("--task", choices=sorted(TASKS), help="default: the --config's, else flow_matching")
    parser.add_argument("--sp", type=int, help="only this sequence-parallel degree")
    parser.add_argument("--mfu", type=float, default=0.35, help="assumed FLOPs utilisation (default 0.35)")
    parser.add_argument("--fp8", action="store_true", help="Transformer Engine FP8 linears (peak x2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def _gib(value: float) -> str:
    return f"{value:8.2f} GiB"


def _layout_line(r: dict) -> str:
    on = {True: "on ", False: "off"}
    return (
        f"  SP {r['sp']:>2}  ckpt {on[r['checkpointing']]}  offload {on[r['offload']]}"
        f"  {r['per_gpu_gib']['total']:7.2f} GiB  {r['time_s']['step']:7.2f} s/step"
        f"  {r['samples_per_s']:.3f} samples/s"
        + (f"  (host {r['host_offload_gib_per_node']:.1f} GiB per node)" if r["offload"] else "")
        + f"\n      {' '.join(r['overrides'])}"
    )


def report(result: dict) -> str:
    """The human-readable plan."""
    mem, flops, comm, time = (
        result[k] for k in ("per_gpu_gib", "step_tflop_per_gpu", "communication_gib_per_gpu", "time_s")
    )
    a = result["assumptions"]
    lines = [
        f"{result['preset']} / {result['task']} on {result['gpus']} GPUs: "
        f"{result['tokens_per_sample']:,} tokens per sample, {result['params']:,} parameters "
        f"({result['trainable_params']:,} trainable, {result['lora_params']:,} LoRA)",
        f"layout: SP {result['sp']}, checkpointing {'on' if result['checkpointing'] else 'off'}, "
        f"{result['deepspeed']}{'' if result['fits'] else '  (DOES NOT FIT: the most frugal layout)'}",
        "per-GPU memory:",
    ]
    lines += [f"  {key:30s}{_gib(value)}" for key, value in mem.items()]
    if result["offload"]:
        host = result["host_offload_gib_per_node"]
        lines.append(
            f"host memory per node for the offloaded states: {host:.2f} GiB "
            "(at least: DeepSpeed's CPU-Adam buffers come on top)"
        )
    lines.append(
        f"step FLOPs per GPU: forward {flops['forward']:.1f} TFLOP, forward+backward "
        f"{flops['model']:.1f}, executed (with recompute) {flops['executed']:.1f}"
    )
    lines += ["communication per GPU and step:"] + [f"  {k:30s}{_gib(v)}" for k, v in comm.items()]
    lines += [
        f"step time: {time['step']:.2f} s (compute {time['compute']:.2f} s at an assumed MFU of "
        f"{a['mfu']:.0%} of {a['name']} {a['bf16_tflops']:.0f} TFLOP/s bf16 peak, communication "
        f"{time['communication']:.2f} s, host offload {time['offload']:.2f} s); "
        f"{result['samples_per_s']:.3f} samples/s",
        f"layouts that fit in {a['fit_fraction']:.0%} of the GPU memory, best first:",
    ]
    lines += [_layout_line(r) for r in result["layouts"]] or ["  none: more GPUs, a smaller clip or batch"]
    return "\n".join(lines)


def preset_and_task(args: argparse.Namespace) -> tuple[str, str]:
    """``--preset`` / ``--task``, else those of ``--config`` (task default flow_matching)."""
    if args.config is None:
        if args.preset is None:
            raise UserError("the following arguments are required: --preset (or --config)")
        return args.preset, args.task or "flow_matching"
    from megavg.plan.layouts import resolve
    from megavg.train.config import load_config

    cfg = load_config(resolve(args.config))
    preset, task = args.preset or cfg.model.preset, args.task or cfg.task.name
    if not preset:
        raise UserError(f"--config {args.config}: sets no model.preset (give --preset)")
    if task not in TASKS:
        raise UserError(f"--config {args.config}: task {task!r} is not planned (planned: {', '.join(TASKS)})")
    return preset, task


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    preset, task = preset_and_task(args)
    req = Request(
        preset, args.nodes, args.gpus_per_node, args.gpu_memory_gib, tuple(args.size), args.frames,
        args.batch, task, args.sp, args.fp8, args.mfu, config=args.config,
    )  # fmt: skip
    result = plan(req)
    print(json.dumps(result, indent=1) if args.json else report(result))


if __name__ == "__main__":
    run_cli(main)
