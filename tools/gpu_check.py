"""The checks of ``bash tools/gpu_check.sh`` (docs/gpu.md): gpu-marked tests; training over all ranks
(each task, FP8, sequence parallel 2, validation, kill and resume); DC-AE-V streaming decode; ``generate``
on one and two processes; ``eval recon`` over all ranks.

On a CUDA machine the world is every visible GPU (NCCL) with whatever Transformer Engine and flash-attn
import. ``--cpu-rehearsal N`` runs the same checks with N gloo processes on the CPU, the strict CPU
stand-ins of TE and flash-attn (tests/standins) in place of the libraries: it tests this script and the
multi-rank paths, and verifies nothing about GPUs.

Prints one table: check, result (``pass``, ``FAIL (...)`` or ``skipped: <why>`` for what did not run),
seconds, peak GPU memory (MiB above idle summed over the GPUs, nvidia-smi polled every 0.2 s; ``n/a``
without it). Exit 1 if any check failed. Each check's output goes to ``<work>/<check>.log``, the table
to ``<work>/results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CLIP_FRAMES = 16  # frames per video written for the DC-AE-V shards and eval


@dataclasses.dataclass
class Setup:
    """Where the checks run: ``world`` ranks on ``device``, subprocess environment ``env``, inputs ``p``."""

    world: int
    device: str
    env: dict[str, str]
    work: Path
    timeout: float
    te: str | None  # why Transformer Engine cannot be used here (None: it can)
    flash: str | None  # why flash-attn cannot be used here
    p: dict[str, Path] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Check:
    """A command (``argv``) or a function of the log file returning an exit status (``run``); ``skip``:
    why it cannot run here; ``expect``: files a passing run must have written."""

    name: str
    argv: list[str] | None = None
    run: Callable[[Setup, Path], int | str] | None = None
    skip: str | None = None
    expect: list[Path] = dataclasses.field(default_factory=list)


def gpu_memory_mib() -> int | None:
    """MiB in use on all GPUs now (nvidia-smi), or None without it."""
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True)  # fmt: skip
    return sum(int(v) for v in out.stdout.split()) if out.returncode == 0 else None


def execute(check: Check, s: Setup) -> tuple[str, float, str]:
    """Run ``check`` (output to ``work/<name>.log``): (result, seconds, peak MiB above idle)."""
    if check.skip:
        return f"skipped: {check.skip}", 0.0, "-"
    idle, peak, done = gpu_memory_mib(), [0], threading.Event()

    def poll() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], (gpu_memory_mib() or 0) - (idle or 0))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.monotonic()
    slug = re.sub(r"\W+", "_", check.name).strip("_")
    log_path = s.work / f"{slug}.log"
    if check.run is not None:
        rc = check.run(s, log_path)
    else:
        with open(log_path, "w") as log:
            try:
                rc = subprocess.run(check.argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    timeout=s.timeout, env=s.env).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                rc = "timeout"
    seconds = time.monotonic() - start
    done.set()
    poller.join()
    missing = [str(p.relative_to(s.work)) for p in check.expect if not p.exists()]
    result = "pass" if rc == 0 and not missing else f"FAIL ({rc if rc != 0 else 'missing ' + missing[0]})"
    return result, seconds, "n/a" if idle is None else str(peak[0])


def torchrun(s: Setup, nproc: int, *argv: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node=nproc ARGV``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *argv]  # fmt: skip


def train(s: Setup, config: str, run_dir: Path, *overrides: str) -> list[str]:
    """One bf16 step of ``config`` over all ranks (NCCL on CUDA, gloo on the CPU: the trainer's choice)."""
    return torchrun(s, s.world, "-m", "megavg.train", "--config", f"configs/train/{config}.yaml",
                    "schedule.steps=1", "parallel.deepspeed=configs/deepspeed/zero3_bf16.json",
                    "logging.tensorboard=false", f"run.dir={run_dir}", *overrides)  # fmt: skip


def needs(s: Setup, te: bool = False, flash: bool = False, ranks: int = 1) -> str | None:
    """Why a check needing these cannot run here, or None."""
    if te and s.te:
        return f"transformer_engine: {s.te}"
    if flash and s.flash:
        return f"flash_attn: {s.flash}"
    if s.world < ranks:
        return f"needs {ranks} ranks, this machine has {s.world}"
    return None


def write_videos(s: Setup) -> None:
    """``max(world, 4)`` distinct 16-frame 64x64 windows of the shipped clips (clip k % 4 from frame
    16 * (k // 4)) in ``videos-raw``, a darkened copy of each in ``videos-fake`` (eval), and video shards
    of one window each: enough shards for every data-parallel rank, checked."""
    import torch.nn.functional as F

    from megavg.data.make_shards import main as make_shards
    from megavg.data.samples import real_clips
    from megavg.data.shards import list_shards
    from megavg.infer.video_io import VideoWriter, read_pieces

    clips, raw, fake = real_clips(), s.work / "videos-raw", s.work / "videos-fake"
    raw.mkdir(parents=True), fake.mkdir()
    for k in range(max(s.world, len(clips))):
        start = CLIP_FRAMES * (k // len(clips))
        pieces = list(read_pieces(clips[k % len(clips)], CLIP_FRAMES, max_frames=start + CLIP_FRAMES))
        window = F.interpolate(pieces[-1][0], size=(64, 64), mode="area")[None]  # 1, 3, 16, 64, 64
        for folder, video in ((raw, window), (fake, 0.8 * window)):
            with VideoWriter(folder / f"w{k:03d}.mp4", 25) as writer:
                writer.write(video)
    make_shards([str(raw), "--out", str(s.p["videos"]), "--samples-per-shard", "1"])
    shards = list_shards(str(s.p["videos"]), "video")
    if len(shards) < s.world:
        raise SystemExit(f"error: gpu_check wrote {len(shards)} video shards for {s.world} ranks")
    s.p.update(eval_real=raw, eval_fake=fake)


def prepare(s: Setup) -> None:
    """Tiny inputs: video shards, latent shards (2 samples each, one shard per rank at least), a base
    DiT for alignment, tiny pipeline components."""
    import torch

    import megavg.models
    from megavg.data import write_latent_shards
    from tests.infer.tiny_pipeline import build_components

    torch.manual_seed(0)
    s.p.update(videos=s.work / "videos", latents=s.work / "latents", base=s.work / "base")
    write_videos(s)
    megavg.models.build("wan-tiny-t2v").save(s.p["base"])
    samples = [{"latents": torch.randn(8, 2, 4, 4), "text": torch.randn(5, 32),
                "teacher_latents": torch.randn(4, 2, 8, 8)} for _ in range(2 * max(s.world, 4))]  # fmt: skip
    write_latent_shards(samples, s.p["latents"], samples_per_shard=2)
    s.p.update(build_components(s.work / "pipe-parts"))
    s.p["clip_video"] = s.p["eval_real"] / "w000.mp4"
    # validation decodes the tiny student's 8-channel latents: a tiny DC-AE-V with 8 latent channels
    vae8 = dataclasses.replace(megavg.models.preset_args("dc-ae-v-tiny"), latent_channels=8)
    s.p["vae_student"] = megavg.models.build(vae8).save(s.work / "vae-student")


def gpu_tests(s: Setup, log_path: Path) -> int | str:
    """``pytest -m gpu``: "pass" only when every gpu-marked test ran; skips are reported with why."""
    argv = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu", "tests/"]
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=s.env,
                                timeout=3 * s.timeout).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            return "timeout"
    return pytest_result(rc, log_path.read_text())


def pytest_result(rc: int, text: str) -> int | str:
    """A pytest run's table entry from its exit status and ``-rs`` output: 0 (pass) only when tests ran
    and none skipped; ``skipped: ...`` when none ran; ``partial: ...`` when some did."""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|skipped|failed|error)", text)}
    reason = re.search(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", text, re.M)
    why = f" ({reason.group(1)[:60]})" if reason else ""
    if rc not in (0, 5):  # 5: no test collected
        return rc
    if not counts.get("passed"):
        return f"skipped: {counts.get('skipped', 0)} gpu tests, none ran{why}"
    if counts.get("skipped"):
        return f"partial: {counts['passed']} passed, {counts['skipped']} skipped{why}"
    return 0


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it, as a node failure would. Not ``killpg``: torchrun
    starts each rank in a session of its own (torch.distributed.elastic's ``SubprocessHandler`` passes
    ``start_new_session=True``), so the launcher's process group does not hold the ranks."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)


def kill_and_resume(s: Setup, log_path: Path) -> int | str:
    """Train, SIGKILL every rank once a checkpoint is complete, relaunch: it must resume from that step
    (the log's "starting at step K") and finish step K + 1."""
    from megavg.train.checkpoint import read_latest, step_of

    run_dir = s.work / "r-resume"
    args = [*latent_args(s), "task.args.rank=4", "checkpoint.every=1"]
    first = train(s, "adapt_3_lora", run_dir, *args, "schedule.steps=1000")
    deadline = time.monotonic() + s.timeout
    with open(log_path, "w") as log:
        proc = subprocess.Popen(first, cwd=REPO, env=s.env, stdout=log, stderr=subprocess.STDOUT)
        while not (run_dir / "checkpoints" / "latest").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                kill_tree(proc.pid)
                return f"no checkpoint before the kill (exit {proc.wait()})"
            time.sleep(0.2)
        kill_tree(proc.pid)  # torchrun and every rank: no clean shutdown
        proc.wait()
        step = step_of(read_latest(run_dir / "checkpoints"))
        log.write(f"\n--- killed after the checkpoint of step {step}; relaunching ---\n")
        log.flush()
        second = train(s, "adapt_3_lora", run_dir, *args, f"schedule.steps={step + 1}")
        try:
            rc = subprocess.run(second, cwd=REPO, env=s.env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=s.timeout).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            return "timeout"
    resumed = f"starting at step {step} of {step + 1}" in log_path.read_text()
    return rc if rc != 0 else (0 if resumed else f"did not resume from step {step}")


def latent_args(s: Setup) -> list[str]:
    """Latent shards and the tiny student; data parallel only (adapt_3_lora.yaml ships SP 8)."""
    return [f"data.shards={s.p['latents']}", "data.kind=latent", "model.preset=wan-tiny-student-t2v",
            "parallel.sp_size=1"]  # fmt: skip


def training_checks(s: Setup) -> list[Check]:
    """Each task over all ranks, then FP8, sequence parallel 2, validation, kill and resume."""
    w, p, lat = s.work, s.p, latent_args(s)
    fp8 = ["model.args.layers.linear=te", "model.args.layers.attention=flash",
           "model.activation_checkpointing=true", "model.args.layers.fp8.enabled=true",
           "model.args.layers.fp8.bf16_first_blocks=0",
           "model.args.layers.fp8.bf16_last_blocks=0"]  # fmt: skip
    valid = ["validation.every=1", 'validation.prompts=["a red fox in snow"]', "validation.size=[16, 16]",
             "validation.frames=8", "validation.steps=2", f"validation.vae={p['vae_student']}",
             f"validation.text_encoder={p['text']}"]  # fmt: skip
    teacher = [f"task.args.teacher={p['base']}", "parallel.zero_init=false"]
    return [
        Check("train flow_matching", train(s, "wan_flow_tiny", w / "r1", *lat)),
        Check("train dcaev recon", train(s, "dcaev_tiny_test", w / "r2", f"data.shards={p['videos']}")),
        Check("train adapt_align", train(s, "adapt_1_align", w / "r3", *lat, *teacher)),
        Check("train adapt_lora", train(s, "adapt_3_lora", w / "r4", *lat, "task.args.rank=4")),
        Check(
            "train FP8 (TE, every block)",
            train(s, "wan_flow_tiny", w / "r5", *lat, *fp8),
            skip=needs(s, te=True, flash=True),
        ),  # fmt: skip
        Check(
            "train SP 2",
            train(s, "wan_flow_tiny", w / "r6", *lat, "parallel.sp_size=2"),
            skip=needs(s, ranks=2) or (None if s.world % 2 == 0 else "SP 2 needs an even rank count"),
        ),
        Check(
            "train + validation",
            train(s, "adapt_3_lora", w / "r7", *lat, "task.args.rank=4", *valid),
            expect=[w / "r7" / "validation" / "step_0000001" / "0.mp4"],
        ),  # fmt: skip
        Check("kill and resume", run=kill_and_resume),
    ]


def inference_checks(s: Setup) -> list[Check]:
    """DC-AE-V streaming decode, export + ``generate`` (one process, then ``--sp 2``), ``eval recon``."""
    py, w, p = sys.executable, s.work, s.p
    export = [py, "tools/export_pipeline.py", "--transformer", str(p["t2v"]), "--vae", str(p["vae"]),
              "--text-encoder", str(p["text"]), "--out", str(w / "pipe")]  # fmt: skip
    run = ["--prompt", "a red fox in snow", "--size", "32", "48", "--frames", "24", "--steps", "2",
           "--device", s.device, "--no-progress"]  # fmt: skip
    generate = [py, "-m", "megavg.infer.generate", str(w / "pipe"), *run, "--out", str(w / "fox.mp4")]
    reconstruct = [py, "-m", "megavg.infer.reconstruct", str(p["clip_video"]), "--model", str(p["vae"]),
                   "--out", str(w / "rec.mp4"), "--frames", "8", "--device", s.device,
                   "--dtype", "bf16"]  # fmt: skip
    sp2 = torchrun(s, 2, "-m", "megavg.infer.generate", str(w / "pipe"), *run, "--sp", "2",
                   "--out", str(w / "fox-sp2.mp4"))  # fmt: skip
    recon = torchrun(s, s.world, "-m", "megavg.eval", "recon", str(p["eval_real"]), str(p["eval_fake"]))
    return [
        Check("dcaev streaming decode", reconstruct, expect=[w / "rec.mp4"]),
        Check(
            "generate (export + run)",
            ["bash", "-c", f"{shlex.join(export)} && {shlex.join(generate)}"],
            expect=[w / "fox.mp4"],
        ),  # fmt: skip
        Check("generate --sp 2 (2 processes)", sp2, skip=needs(s, ranks=2), expect=[w / "fox-sp2.mp4"]),
        Check(f"eval recon ({s.world} processes)", recon),
    ]


def library_reasons(rehearsal: bool) -> tuple[str | None, str | None]:
    """Why TE / flash-attn cannot be used (None: usable); the rehearsal uses the stand-ins."""
    if rehearsal:
        return None, None
    from megavg.layers.backends import unusable_reason

    return unusable_reason("transformer_engine"), unusable_reason("flash_attn")


def make_setup(args: argparse.Namespace) -> Setup:
    import torch

    work = Path(args.work or tempfile.mkdtemp(prefix="megavg-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    te, flash = library_reasons(args.cpu_rehearsal is not None)
    if args.cpu_rehearsal is not None:
        from tests.gpu_standins import standin_env

        env = standin_env({**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        return Setup(args.cpu_rehearsal, "cpu", env, work, args.timeout or 900.0, te, flash)
    world = torch.cuda.device_count()
    return Setup(world, "cuda", dict(os.environ), work, args.timeout or 240.0, te, flash)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", help="folder for inputs and logs (default: a new temporary folder)")
    parser.add_argument("--timeout", type=float, help="seconds per check (default 240; rehearsal 900)")
    parser.add_argument("--cpu-rehearsal", type=int, metavar="N",
                        help="the same checks with N gloo ranks on the CPU and the TE/flash-attn stand-ins "
                        "(tests the script; verifies nothing about GPUs)")  # fmt: skip
    parser.add_argument("--only", metavar="TEXT[,TEXT...]",
                        help="run only the checks whose name contains one of these texts")  # fmt: skip
    args = parser.parse_args(argv)
    import torch

    if args.cpu_rehearsal is None and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch on this machine: nothing run")
        return 0
    if args.cpu_rehearsal is not None and args.cpu_rehearsal < 1:
        parser.error("--cpu-rehearsal: N must be >= 1")
    s = make_setup(args)
    prepare(s)
    rehearsal = "--cpu-rehearsal: the gpu-marked tests compare CUDA with the CPU"
    checks = [Check("gpu-marked tests", run=gpu_tests, skip=rehearsal if s.device == "cpu" else None)]
    checks += [*training_checks(s), *inference_checks(s)]
    wanted = args.only.split(",") if args.only else [""]
    rows = [(c.name, *execute(c, s)) for c in checks if any(text in c.name for text in wanted)]
    report(s, rows)
    rows_json = [{"check": n, "result": r, "seconds": round(t, 1)} for n, r, t, _ in rows]
    (s.work / "results.json").write_text(json.dumps(rows_json, indent=1))
    return 1 if any(r[1].startswith("FAIL") for r in rows) else 0


def report(s: Setup, rows: list[tuple[str, str, float, str]]) -> None:
    """The table, under one line per GPU library saying whether it was used."""
    import torch

    if s.device == "cpu":
        where = f"CPU rehearsal: {s.world} gloo ranks, TE/flash-attn stand-ins (nothing verified about GPUs)"
    else:
        where = f"{s.world} GPU(s): {torch.cuda.get_device_name(0)}"
    print(f"\n{where}; logs in {s.work}")
    for name, reason in (("transformer_engine", s.te), ("flash_attn", s.flash)):
        print(f"{name}: {'used' if reason is None else 'NOT USED: ' + reason}")
    print(f"{'check':<32} {'result':<40} {'seconds':>8} {'peak MiB':>9}")
    for name, result, seconds, peak in rows:
        print(f"{name:<32} {result:<40} {seconds:>8.1f} {peak:>9}")


if __name__ == "__main__":
    sys.exit(main())
