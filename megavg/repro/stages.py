"""The reproduction's stages, each resumable: a stage whose ``DONE.json`` exists is skipped.

A stage writes its outputs under ``OUT/<stage>/`` and ``DONE.json`` last (wall seconds, load average
before and after, and what it measured), so an interrupted stage is simply redone. Every training stage
is a ``deepspeed`` launch of ``megavg.train`` (:mod:`megavg.repro.launch`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from megavg.repro import launch
from megavg.repro.sizes import Sizes
from megavg.utils.logging import get_logger

log = get_logger("megavg.repro")
DONE = "DONE.json"


@dataclasses.dataclass
class Context:
    """Where a run writes (``out``) and how big it is."""

    out: Path
    sizes: Sizes
    smoke: bool = False

    def dir(self, stage: str) -> Path:
        return self.out / stage

    def log(self, stage: str) -> Path:
        return self.out / "logs" / f"{stage}.log"

    def done(self, stage: str) -> dict | None:
        path = self.dir(stage) / DONE
        return json.loads(path.read_text()) if path.is_file() else None


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def run_stage(ctx: Context, name: str, body: Callable[[Context], dict]) -> dict:
    """Run ``body`` unless ``name`` is done; record wall time and load average in its DONE.json."""
    done = ctx.done(name)
    if done is not None:
        log.info("stage %s: done already (%.0f s), skipped", name, done["wall_s"])
        return done
    log.info("stage %s: starting", name)
    ctx.dir(name).mkdir(parents=True, exist_ok=True)
    before, start = loadavg(), time.time()
    result = body(ctx)
    record = {"wall_s": time.time() - start, "loadavg_before": before, "loadavg_after": loadavg(), **result}
    tmp = ctx.dir(name) / (DONE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(ctx.dir(name) / DONE)
    log.info("stage %s: done in %.0f s", name, record["wall_s"])
    return record


def train_and_export(ctx: Context, stage: str, recipe: str, steps: int, overrides: list[str]) -> Path:
    """Train ``recipe`` for ``steps`` into OUT/<stage>/run and consolidate its last checkpoint to
    OUT/<stage>/model."""
    run_dir, model = ctx.dir(stage) / "run", ctx.dir(stage) / "model"
    launch.train(recipe, run_dir, [f"schedule.steps={steps}", *overrides], ctx.log(stage))
    return launch.consolidate(run_dir, model, ctx.log(stage))
