"""Run the real commands of a recipe: ``deepspeed`` launches of ``megavg.train``, consolidation, tools.

    train(ctx, "base_dit", run_dir, ["model.init=..."])   # configs/repro/base_dit.yaml + overrides
    consolidate(run_dir, out, tag=None)

A recipe file under ``configs/repro/`` names a shipped config (``config:``) and the ``overrides:`` it
applies, as ``section.key: value`` pairs; they become ``section.key=value`` arguments after ``--config``,
exactly what a user types. Training runs on 2 CPU processes through DeepSpeed's launcher.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from megavg.utils.errors import UserError
from megavg.utils.logging import get_logger

log = get_logger("megavg.repro")
ROOT = Path(__file__).resolve().parents[2]  # the checkout: configs/ and tools/ live here


def recipe_args(name: str) -> list[str]:
    """``--config FILE section.key=value ...`` of ``configs/repro/<name>.yaml``."""
    path = ROOT / "configs" / "repro" / f"{name}.yaml"
    recipe = yaml.safe_load(path.read_text())
    overrides = [f"{key}={json.dumps(value)}" for key, value in (recipe.get("overrides") or {}).items()]
    return ["--config", str(ROOT / recipe["config"]), *overrides]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], log_file: Path, env: dict | None = None) -> None:
    """Run ``cmd`` from the checkout with its output appended to ``log_file``; a failure is a UserError."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    log.info("$ %s", " ".join(cmd))
    with open(log_file, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        code = subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    if code:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-15:])
        raise UserError(f"command failed (exit {code}): {' '.join(cmd[:6])} ... (log: {log_file})\n{tail}")


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def train(recipe: str, run_dir: Path, overrides: list[str], log_file: Path, ranks: int = 2) -> None:
    """One ``megavg.train`` run through DeepSpeed's launcher on ``ranks`` local CPU processes."""
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    cmd = [
        deepspeed,
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(free_port()),
        "--log_level",
        "warning",
        "--module",
        "megavg.train",
        *recipe_args(recipe),
        f"run.dir={run_dir}",
        *overrides,
    ]
    run(cmd, log_file, env={"DS_ACCELERATOR": "cpu"})


def consolidate(run_dir: Path, out: Path, log_file: Path, tag: str | None = None) -> Path:
    """``tools/consolidate.py RUN --out OUT`` (a given checkpoint ``tag``: ``--tag``)."""
    extra = ["--tag", tag] if tag else []
    run(python(str(ROOT / "tools" / "consolidate.py"), str(run_dir), "--out", str(out), *extra), log_file)
    if not (out / "config.json").is_file():
        raise UserError(f"{out}: consolidation wrote no model folder")
    return out


def tags(run_dir: Path) -> list[tuple[int, str]]:
    """(step, tag) of every checkpoint kept in ``run_dir/checkpoints``, by step."""
    found = []
    for path in (run_dir / "checkpoints").glob("*/"):
        digits = "".join(c for c in path.name if c.isdigit())
        if path.is_dir() and digits:
            found.append((int(digits), path.name))
    return sorted(found)
