"""Break the code on purpose and watch the test that guards each fix go red (issue 23's findings).

    python -m tests.mutations                 # the fast ones (seconds each)
    python -m tests.mutations --all           # also the multi-process ones (up to ~2 min each)
    python -m tests.mutations NAME [NAME ...] # chosen ones; --list names them

Each mutation replaces one exact piece of source (it must occur once), runs its tests, restores the file
(also on Ctrl-C) and prints one line: ``red`` when the tests failed, ``GREEN`` when they passed anyway (a
test that cannot fail). Exit status 1 when any mutation stayed green. Run it on a clean tree: it rewrites
source files while it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutation:
    """Replace ``old`` by ``new`` in ``path``; ``tests`` (pytest node ids) must then fail."""

    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    slow: bool = False  # a multi-process run


VALIDATION = "tests/train/test_validation.py::"
MUTATIONS = {
    "backend found, not importable": Mutation(
        "megavg/layers/backends.py", '        return "not installed"\n',
        '        return "not installed"\n    return None\n', ("tests/layers/test_backends.py",)),
    "--compile allows TE linears": Mutation(
        "megavg/infer/sampling.py", "    if enabled and uses_transformer_engine(model.blocks[0]):",
        "    if False:", ("tests/infer/test_compile.py::test_compile_refuses_transformer_engine_linears",)),
    "attention backend traced per call": Mutation(
        "megavg/layers/attention.py", "@torch.compiler.assume_constant_result  #", "#",
        ("tests/infer/test_compile.py::test_block_compiles_to_one_graph",)),
    "no DeepSpeed floor": Mutation(
        "megavg/train/engine.py", "    if Version(version) < Version(MIN_DEEPSPEED):", "    if False:",
        ("tests/train/test_deepspeed_version.py",)),
    "MFU against the FP8 peak": Mutation(
        "megavg/train/flops.py", '        peaks["perf/mfu_fp8_peak"] = fp8\n',
        '        peaks["perf/mfu_fp8_peak"] = fp8\n        peaks["perf/mfu"] = fp8\n',
        ("tests/train/test_flops.py::test_mfu_is_against_the_bf16_peak_also_for_fp8_runs",)),
    "one FP8 autocast per block": Mutation(
        "megavg/models/wan/model.py", "itertools.groupby(span, key=in_fp8.__getitem__)",
        "((in_fp8[i], [i]) for i in span)",
        ("tests/models/test_wan_standins.py::test_delayed_scaling_reduces_amaxes_once_per_forward",)),
    "FP8 rows padded to 8": Mutation(
        "megavg/layers/fp8.py", "FP8_ROW_MULTIPLE = 16", "FP8_ROW_MULTIPLE = 8",
        ("tests/models/test_wan_standins.py",)),
    "step cache: the other CFG row's residual": Mutation(
        "megavg/infer/step_cache.py", "            return h + self.residual\n",
        "            return h + self.residual.flip(0)\n",
        ("tests/infer/test_runner_speed.py::test_fbcache_keeps_each_branch_residual_like_diffusers",)),
    "gpu_check: one shard per shipped clip": Mutation(
        "tools/gpu_check.py", "    for k in range(max(s.world, len(clips))):",
        "    for k in range(len(clips)):",
        ("tests/utils/test_gpu_check.py::test_eight_ranks_get_eight_distinct_video_shards",)),
    "gpu_check: skipped gpu tests read pass": Mutation(
        "tools/gpu_check.py", "    if rc not in (0, 5):  # 5: no test collected", "    if True:",
        ("tests/utils/test_gpu_check.py::test_skipped_gpu_tests_never_read_pass",)),
    "truncated encoder weights: a traceback": Mutation(
        "megavg/utils/errors.py", "LOAD_ERRORS = (OSError, ValueError, SafetensorError)",
        "LOAD_ERRORS = (OSError, ValueError)",
        ("tests/infer/test_precompute.py::test_bad_flags",
         "tests/infer/test_conditioning.py::test_image_encoder_bad_folder")),
    "sample grid: the first held-out clips": Mutation(
        "megavg/repro/report.py", "[clip_of[p] for p in prompts]",
        '[heldout / r["path"] for r in listing[:videos]]',
        ("tests/repro/test_report.py",)),
    "consolidated config keeps training layers": Mutation(
        "megavg/train/consolidate.py", "args = registry.runner_args(model_args(cfg.model), keep_fp8)",
        "args = model_args(cfg.model)", ("tests/tasks/test_adapt_chain.py::test_three_phases_and_merge",),
        slow=True),
    "no parallel.timeout_minutes": Mutation(
        "megavg/train/engine.py", ", timeout=datetime.timedelta(minutes=timeout_minutes))", ")",
        ("tests/train/test_timeout.py",), slow=True),
    "validation prompts encoded before training": Mutation(
        "megavg/train/validation.py",
        "            self.thread = threading.Thread(target=self._encode, args=(cfg, comps, dit, vae, key), "
        "daemon=True)\n            self.thread.start()",
        "            self._encode(cfg, comps, dit, vae, key)",
        (VALIDATION + "test_rank0_encodes_the_prompts_while_the_other_ranks_train",), slow=True),
    "validation inputs' readiness not agreed": Mutation(
        "megavg/train/validation.py", "            if not agree(self.error is None, every=True):",
        "            if self.error is not None:",
        (VALIDATION + "test_a_failed_prompt_encoding_stops_every_rank_with_its_error",), slow=True),
    "CFG mode decided per rank": Mutation(
        "megavg/infer/sampling.py",
        "            cfg_batch = agree(cfg_batch, every=True, group=model_group, device=noise.device)",
        "            pass",
        ("tests/infer/test_generate_parallel.py::test_sp_ranks_agree_on_the_cfg_mode",
         VALIDATION + "test_ranks_agree_on_cfg_mode_and_a_finished_run_with_one_failing_read"), slow=True),
    "finished run decided per rank": Mutation(
        "megavg/train/__main__.py", "(done := agreed_steps_done(cfg))", "(done := steps_done(cfg))",
        (VALIDATION + "test_ranks_agree_on_cfg_mode_and_a_finished_run_with_one_failing_read",), slow=True),
    "stop flag not checked in validation": Mutation(
        "megavg/train/validation.py",
        "        model = engine if stop is None else _Interruptible(engine, stop)", "        model = engine",
        (VALIDATION + "test_stop_signal_during_validation_saves_and_exits",), slow=True),
}  # fmt: skip


def run(name: str, mutation: Mutation) -> bool:
    """Apply ``mutation``, run its tests, restore; True when the tests failed (red)."""
    path = REPO / mutation.path
    original = path.read_text()
    count = original.count(mutation.old)
    if count != 1:
        raise SystemExit(
            f"error: mutation {name!r}: its source piece occurs {count} times in {mutation.path}, not once "
            "(the code moved: update tests/mutations.py)"
        )
    path.write_text(original.replace(mutation.old, mutation.new))
    try:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *mutation.tests]
        # the tests' own subprocesses (tools/*.py scripts) must import this tree, not an installed copy
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    finally:
        path.write_text(original)
    lines = proc.stdout.strip().splitlines()
    first_error = next((line[1:].strip() for line in lines if line.startswith("E ")), "")
    red = proc.returncode != 0
    print(
        f"{'red  ' if red else 'GREEN'} {name}: {lines[-1] if lines else ''} | {first_error[:140]}",
        flush=True,
    )
    return red


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: the fast ones)")
    parser.add_argument("--all", action="store_true", help="also the multi-process mutations")
    parser.add_argument("--list", action="store_true", help="print the mutation names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(f"{name}{' (slow)' if m.slow else ''}" for name, m in MUTATIONS.items()))
        return 0
    unknown = [name for name in args.names if name not in MUTATIONS]
    if unknown:
        raise SystemExit(f"error: unknown mutation {unknown[0]!r} (--list names them)")
    names = args.names or [n for n, m in MUTATIONS.items() if args.all or not m.slow]
    green = [name for name in names if not run(name, MUTATIONS[name])]
    return 1 if green else 0


if __name__ == "__main__":
    sys.exit(main())
