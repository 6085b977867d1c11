"""The checks of ``bash tools/gpu_check.sh`` on a machine with CUDA (see docs/gpu.md): gpu-marked tests,
one bf16 training step per task on tiny presets over NCCL (world size = visible GPUs), DC-AE-V
reconstruction with streaming decode, and ``generate`` on tiny components, all on CUDA.

Prints one table: check, result, seconds, peak GPU memory (MiB used above the idle reading, summed
over the GPUs, polled with nvidia-smi every 0.2 s; ``n/a`` without nvidia-smi). Exit 1 if any check
failed. Each check's output goes to ``<work>/<check>.log``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def gpu_memory_mib() -> int | None:
    """MiB in use on all GPUs now (nvidia-smi), or None without it."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True)  # fmt: skip
    return sum(int(v) for v in out.stdout.split()) if out.returncode == 0 else None


def run_check(name: str, argv: list[str], work: Path, timeout: float) -> tuple[str, float, str]:
    """Run ``argv`` (output to ``work/<name>.log``): (result, seconds, peak MiB above idle)."""
    idle, peak, done = gpu_memory_mib(), [0], threading.Event()

    def poll() -> None:
        while not done.wait(0.2):
            now = gpu_memory_mib()
            peak[0] = max(peak[0], (now or 0) - (idle or 0))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.monotonic()
    with open(work / f"{name}.log", "w") as log:
        try:
            rc = subprocess.run(
                argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    seconds = time.monotonic() - start
    done.set()
    poller.join()
    result = "pass" if rc == 0 else f"FAIL ({rc})"
    return result, seconds, "n/a" if idle is None else str(peak[0])


def prepare(work: Path) -> dict[str, Path]:
    """Tiny inputs: video shards of the sample clips, latent shards, a base + student DiT, tiny pipeline."""
    import torch

    import megavg.models
    from megavg.data import write_latent_shards
    from megavg.data.make_shards import main as make_shards
    from megavg.data.samples import real_clips
    from tests.infer.tiny_pipeline import build_components

    torch.manual_seed(0)
    paths = {"videos": work / "videos", "latents": work / "latents", "base": work / "base"}
    make_shards([*map(str, real_clips()), "--out", str(paths["videos"]), "--samples-per-shard", "1"])
    base = megavg.models.build("wan-tiny-t2v")
    base.save(paths["base"])
    samples = [{"latents": torch.randn(8, 2, 4, 4), "text": torch.randn(5, 32),
                "teacher_latents": torch.randn(4, 2, 8, 8)} for _ in range(8)]  # fmt: skip
    write_latent_shards(samples, paths["latents"], samples_per_shard=2)
    paths.update(build_components(work / "pipe-parts"))
    paths["clip_video"] = real_clips()[0]
    return paths


def train(config: str, run_dir: Path, gpus: int, *overrides: str) -> list[str]:
    """torchrun over all GPUs: one bf16 step of ``config`` (NCCL: the trainer's backend on CUDA)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            "-m", "megavg.train", "--config", f"configs/train/{config}.yaml", "schedule.steps=1",
            "parallel.deepspeed=configs/deepspeed/zero3_bf16.json", "logging.tensorboard=false",
            f"run.dir={run_dir}", *overrides]  # fmt: skip


def checks(p: dict[str, Path], work: Path, gpus: int, device: str) -> list[tuple[str, list[str]]]:
    """(name, command) of every check after the gpu-marked tests."""
    py, student = sys.executable, "model.preset=wan-tiny-student-t2v"
    latent = [f"data.shards={p['latents']}", "data.kind=latent", "parallel.sp_size=1", student]
    clip, pipe = str(p["clip_video"]), str(work / "pipe")
    export = [py, "tools/export_pipeline.py", "--transformer", str(p["t2v"]), "--vae", str(p["vae"]),
              "--text-encoder", str(p["text"]), "--out", pipe]  # fmt: skip
    fox = str(work / "fox.mp4")
    generate = [py, "-m", "megavg.infer.generate", pipe, "--prompt", "a red fox in snow", "--size", "32",
                "32", "--frames", "8", "--steps", "2", "--device", device, "--out", fox]  # fmt: skip
    return [
        ("train flow_matching", train("wan_flow_tiny", work / "r1", gpus, *latent)),
        ("train dcaev recon", train("dcaev_tiny_test", work / "r2", gpus, f"data.shards={p['videos']}")),
        (
            "train adapt_align",
            train(
                "adapt_1_align",
                work / "r3",
                gpus,
                *latent,
                f"task.args.teacher={p['base']}",
                "parallel.zero_init=false",
            ),
        ),  # fmt: skip
        ("train adapt_lora", train("adapt_3_lora", work / "r4", gpus, *latent, "task.args.rank=4")),
        (
            "dcaev streaming decode",
            [
                py,
                "-m",
                "megavg.infer.reconstruct",
                clip,
                "--model",
                str(p["vae"]),
                "--out",
                str(work / "rec.mp4"),
                "--frames",
                "8",
                "--device",
                device,
                "--dtype",
                "bf16",
            ],
        ),  # fmt: skip
        ("generate (export + run)", ["bash", "-c", f"{shlex.join(export)} && {shlex.join(generate)}"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", help="folder for inputs and logs (default: a new temporary folder)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per check (default 240)")
    cpu_help = "run the checks on the CPU, one process: tests this script's commands without CUDA"
    parser.add_argument("--cpu", action="store_true", help=cpu_help + " (verifies nothing about GPUs)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.cpu:
        print("gpu_check: no CUDA device visible to torch on this machine: nothing run")
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="megavg-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    gpus, device = (1, "cpu") if args.cpu else (torch.cuda.device_count(), "cuda")
    paths = prepare(work)
    rows = [("gpu-marked tests", *run_check("pytest", [sys.executable, "-m", "pytest", "-q", "-m", "gpu",
                                                      "tests/"], work, 3 * args.timeout))]  # fmt: skip
    for name, command in checks(paths, work, gpus, device):
        rows.append((name, *run_check(re.sub(r"\W+", "_", name).strip("_"), command, work, args.timeout)))
    where = "CPU (--cpu)" if args.cpu else f"{gpus} GPU(s): {torch.cuda.get_device_name(0)}"
    print(f"\n{where}; logs in {work}")
    print(f"{'check':<26} {'result':<12} {'seconds':>8} {'peak MiB':>9}")
    for name, result, seconds, peak in rows:
        print(f"{name:<26} {result:<12} {seconds:>8.1f} {peak:>9}")
    return 0 if all(r[1] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
