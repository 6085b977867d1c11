"""megavg's sampler vs diffusers' WanPipeline-style loop on the same DiT weights (``bench_generate.py
--vs-diffusers``).

Shape (the issue's reference): 4 layers, dim 384 (6 heads), FFN 1536, umT5-width text (4096, 512
tokens), latents 16 x 6 x 26 x 50 with patch 1x2x2 = 1,950 tokens, 6 UniPC steps, CFG 5, shift 5.
Weights: a random diffusers ``WanTransformer3DModel``, converted to megavg with ``to_megavg``.
Method (so that a figure reproduces): the contenders alternate round by round (every round runs each
once, in the same order), each variant's figure is the **minimum** over at least 5 rounds (noise from
other jobs only ever adds time), ``OMP_NUM_THREADS`` must be set (the thread count is part of the
figure), and the load average (1/5/15 min, before and after) is printed with the table: a figure is
meaningful only when the load average stayed below the number of cores. Variants:

- ``diffusers``: diffusers' transformer in the loop of ``WanPipeline.__call__`` (cond forward, uncond
  forward, CFG, ``UniPCMultistepScheduler.step``);
- ``megavg plain``: ``sample(cfg_batch=False, reuse_context=False)`` (the runner before issue 17);
- ``megavg exact``: ``sample()`` defaults (batched CFG + cross-attention keys/values projected once);
- ``megavg compiled``: plus ``compile=True`` (first step, compile included, reported separately);
- ``megavg fbcache``: plus ``cache="fbcache"`` at ``--cache-threshold`` (approximate);
- ``megavg SP 2``: ``sample()`` under ``apply_ulysses`` on 2 local processes (torchrun; gloo on CPU).

Printed: seconds per step (minimum over rounds of each run's mean step; the first step of each run
excluded so compiling does not count), speed-up over diffusers, peak memory (GPU allocated, or host RSS
of the process), and the largest difference from diffusers' output relative to its largest value.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from megavg.infer import sampling
from megavg.models import build
from megavg.models.wan.state_dict_adapter import to_megavg
from megavg.utils.memory import peak_rss_mib, reset_peak_rss

ARGS = dict(dim=384, num_heads=6, ffn_dim=1536, num_layers=4, text_dim=4096, freq_dim=256)
LATENT, STEPS, GUIDANCE, SHIFT = (16, 6, 26, 50), 6, 5.0, 5.0
REPO = Path(__file__).resolve().parents[1]


def make_models(device: torch.device):
    """(diffusers WanTransformer3DModel with its own random init, megavg model with the same weights)."""
    import dataclasses

    from diffusers import WanTransformer3DModel

    from megavg.models import preset_args

    sys.path.insert(0, str(REPO))
    from tests.models.wan_reference import diffusers_config

    model = build(dataclasses.replace(preset_args("wan2.1-t2v-1.3b"), **ARGS)).eval()
    torch.manual_seed(0)
    ref = WanTransformer3DModel(**diffusers_config(model.args)).eval()
    model.load_state_dict(to_megavg(ref.state_dict()), strict=True)
    return ref.to(device), model.to(device)


def make_inputs(device: torch.device):
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(1, *LATENT, generator=gen)
    text = torch.zeros(1, sampling.TEXT_TOKENS, ARGS["text_dim"])
    text[:, :20] = torch.randn(1, 20, ARGS["text_dim"], generator=gen)
    negative = torch.zeros_like(text)
    negative[:, :8] = torch.randn(1, 8, ARGS["text_dim"], generator=gen)
    return noise.to(device), text.to(device), negative.to(device)


@torch.no_grad()
def diffusers_loop(ref, noise, text, negative, stats: dict) -> torch.Tensor:
    """WanPipeline's denoising loop (cond forward, uncond forward, CFG, scheduler step)."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=SHIFT
    )
    scheduler.set_timesteps(STEPS, device=noise.device)
    latents, times = noise.clone(), []
    for t in scheduler.timesteps:
        start = time.perf_counter()
        timestep = t.expand(latents.shape[0])
        cond = ref(latents, timestep, text, return_dict=False)[0]
        uncond = ref(latents, timestep, negative, return_dict=False)[0]
        pred = uncond + GUIDANCE * (cond - uncond)
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        _sync(noise.device)
        times.append(time.perf_counter() - start)
    stats.update(first_step_s=times[0], step_s=statistics.mean(times[1:]))
    return latents


def megavg_run(model, noise, text, negative, stats: dict, **options) -> torch.Tensor:
    return sampling.sample(model, noise, text, negative, steps=STEPS, guidance=GUIDANCE, shift=SHIFT,
                           progress=False, stats=stats, **options)  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def _peak(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib()


def sp_worker() -> None:
    """torchrun entry: ``sample()`` under Ulysses SP over all ranks; rank 0 prints one JSON line."""
    import torch.distributed as dist

    from megavg.models.wan.parallelize import apply_ulysses

    dist.init_process_group("gloo")
    _, model = make_models(torch.device("cpu"))
    apply_ulysses(model, dist.group.WORLD)
    noise, text, negative = make_inputs(torch.device("cpu"))
    rounds, results = int(os.environ["BENCH_ROUNDS"]), []
    for _ in range(rounds):
        stats: dict = {}
        reset_peak_rss()
        out = megavg_run(model, noise, text, negative, stats)
        results.append((stats["step_s"], peak_rss_mib()))
    if dist.get_rank() == 0:
        torch.save(out, os.environ["BENCH_OUT"])
        print("SP_RESULT " + json.dumps(results), flush=True)
    dist.destroy_process_group()


def run_sp(rounds: int) -> tuple[list, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BENCH_ROUNDS": str(rounds), "BENCH_OUT": f"{tmp}/out.pt",
               "OMP_NUM_THREADS": "1",
               "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(Path(__file__).resolve()), "--sp-worker"]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        line = next(s for s in proc.stdout.splitlines() if s.startswith("SP_RESULT "))
        return json.loads(line.split(" ", 1)[1]), torch.load(f"{tmp}/out.pt")


MIN_ROUNDS = 5


def compare(
    device: str, rounds: int, threshold: float, with_sp: bool, with_compile: bool = True, core: bool = False
) -> None:
    """Run the variants alternating for ``rounds`` rounds and print the table; ``core``: only diffusers,
    megavg exact and megavg compiled."""
    if "OMP_NUM_THREADS" not in os.environ:
        raise SystemExit(
            "error: set OMP_NUM_THREADS (e.g. OMP_NUM_THREADS=2): the thread count is part of the figure"
        )
    if rounds < MIN_ROUNDS:
        raise SystemExit(f"error: --rounds {rounds}: at least {MIN_ROUNDS} (the table reports the minimum)")
    load_before = os.getloadavg()
    device = torch.device(device)
    ref, model = make_models(device)
    noise, text, negative = make_inputs(device)
    variants = {
        "diffusers": lambda s: diffusers_loop(ref, noise, text, negative, s),
        "megavg plain": lambda s: megavg_run(
            model, noise, text, negative, s, cfg_batch=False, reuse_context=False
        ),
        "megavg exact": lambda s: megavg_run(model, noise, text, negative, s),
        "megavg compiled": lambda s: megavg_run(model, noise, text, negative, s, compile=True),
        f"megavg fbcache {threshold:g}": lambda s: megavg_run(
            model, noise, text, negative, s, cache="fbcache", cache_threshold=threshold
        ),
    }
    if not with_compile:
        del variants["megavg compiled"]
    if core:
        variants = {
            k: v for k, v in variants.items() if k in ("diffusers", "megavg exact", "megavg compiled")
        }
    steps: dict[str, list[float]] = {name: [] for name in variants}
    first, peak, outputs, skipped = {}, {}, {}, {}
    for _ in range(rounds):
        for name, fn in variants.items():  # interleaved: every round runs every variant once
            stats: dict = {}
            _reset_peak(device)
            outputs[name] = fn(stats).float().cpu()
            steps[name].append(stats["step_s"])
            first.setdefault(name, stats["first_step_s"])
            peak[name] = max(peak.get(name, 0.0), _peak(device))
            skipped[name] = stats.get("skipped")
    if with_sp and device.type == "cpu":
        results, outputs["megavg SP 2 (2 processes)"] = run_sp(rounds)
        steps["megavg SP 2 (2 processes)"] = [r[0] for r in results]
        peak["megavg SP 2 (2 processes)"] = max(r[1] for r in results)
        first["megavg SP 2 (2 processes)"] = float("nan")
    report(device, rounds, steps, first, peak, outputs, skipped, (load_before, os.getloadavg()))


def report(device, rounds, steps, first, peak, outputs, skipped, loads) -> None:
    base = min(steps["diffusers"])
    scale = outputs["diffusers"].abs().max().item()
    kind = "GPU allocated" if device.type == "cuda" else "host RSS, per process"
    load = " -> ".join("/".join(f"{x:.1f}" for x in avg) for avg in loads)
    print(
        f"\nvs diffusers on {device.type} (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores), fp32, 4 layers, dim 384, "
        f"1,950 tokens, {STEPS} UniPC steps, CFG {GUIDANCE:g}; minimum of {rounds} alternating rounds; "
        f"load average (1/5/15 min) {load}\n"
    )
    print(f"| variant | s/step | speed-up vs diffusers | first step s | peak MiB ({kind}) | max rel. diff |")
    print("|---|---|---|---|---|---|")
    for name, values in steps.items():
        med = min(values)
        diff = (outputs[name] - outputs["diffusers"]).abs().max().item() / scale
        note = (
            f" (skipped {skipped[name]} of {STEPS})"
            if skipped.get(name) is not None and "cache" in name
            else ""
        )
        print(
            f"| {name}{note} | {med:.3f} | {base / med:.2f}x | {first[name]:.2f} | {peak[name]:.0f} "
            f"| {diff:.1e} |"
        )


if __name__ == "__main__" and "--sp-worker" in sys.argv:
    sp_worker()
