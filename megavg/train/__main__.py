"""``python -m megavg.train --config FILE [section.key=value ...]``: validate, then train.

Everything the user controls is checked before any process group exists (the pre-flight, the same with
``--check`` and in every launched rank): YAML keys and types, task and model args (``model.preset``
against ``model.init``'s config), the DeepSpeed JSON, the shards against the data-parallel ranks and their
loader workers, ``parallel.sp_size`` against the world size and the model's heads, and ``validation:``.
A mistake is one ``error: ...`` line (from rank 0 only when launched) and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

from megavg.data.loader import check_shards
from megavg.tasks import build_task
from megavg.train import validation
from megavg.train.config import TrainConfig, load_config
from megavg.train.engine import deepspeed_config
from megavg.utils.errors import UserError, run_cli
from megavg.utils.logging import get_logger, plural
from megavg.utils.schema import describe

log = get_logger("megavg.train")
EXIT_FINISHED = 3
EXIT_BAD_INPUT = 2  # run_cli's code for a UserError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m megavg.train", description=__doc__, epilog=config_keys(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", help="YAML file (lists only what differs from the defaults)")
    parser.add_argument("--check", action="store_true",
                        help="only validate and say the run's state: exit 0 if steps remain, "
                             f"{EXIT_FINISHED} if the run already reached schedule.steps")  # fmt: skip
    parser.add_argument("--world-size", type=int, metavar="N",
                        help="processes the run will be launched with, for the pre-flight checks "
                             "(default: $WORLD_SIZE as the launcher sets it, else 1)")  # fmt: skip
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by `deepspeed`
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser.parse_intermixed_args(argv)  # overrides may come before or after the options


def config_keys() -> str:
    """The config tree's keys with their types and defaults (from the dataclass schema), for ``--help``."""
    rows = describe(TrainConfig)
    width = max(len(key) for key, _, _ in rows) + 2
    kind = max(len(tp) for _, tp, _ in rows) + 2
    lines = ["config keys (YAML sections, or section.key=value overrides), type, default:"]
    lines += [f"  {key:<{width}}{tp:<{kind}}{default}" for key, tp, default in rows]
    lines.append("task.args and model.args take the task's and the model's own options (docs/training.md).")
    return "\n".join(lines)


SAME_RUN = ("task", "model", "parallel")  # config sections a resumed run must share with its checkpoint


def steps_done(cfg) -> int:
    """The step of the run's latest checkpoint. A tag that would finish the run counts only when a rerun
    of ``cfg`` would simply resume from it: intact, and written with the same task, model and parallel
    settings (0 otherwise; the normal start-up then decides, and reports a damaged or mismatched
    checkpoint). An unfinished run's tag is not hashed here: the normal start-up verifies it once."""
    from megavg.train.checkpoint import read_latest, step_of
    from megavg.train.ckpt_integrity import problems
    from megavg.utils.schema import to_dict

    ckpt_dir = Path(cfg.run.dir) / "checkpoints"
    tag = read_latest(ckpt_dir)
    if not tag or step_of(tag) < cfg.schedule.steps:
        return step_of(tag) if tag else 0
    if problems(ckpt_dir / tag):
        return 0
    try:
        saved = load_config(ckpt_dir / tag / "config.yaml")
    except UserError:
        return 0
    same = all(to_dict(getattr(saved, k)) == to_dict(getattr(cfg, k)) for k in SAME_RUN)
    return step_of(tag) if same else 0


def finished_line(cfg, done: int) -> str:
    return (f"{cfg.run.dir}: already finished (step {done} of schedule.steps={cfg.schedule.steps}); to train "
            f"longer, rerun with schedule.steps=N, N > {done} (resumes from step {done})")  # fmt: skip


def prepare(argv: list[str] | None):
    """Parse and check everything; returns (config, task). Raises UserError on bad input."""
    cfg, task, _ = _prepare(argv)
    return cfg, task


def _prepare(argv: list[str] | None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    task = build_task(cfg)
    task.validate()
    world = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    check_layout(cfg, task, world, told=bool(args.world_size or "WORLD_SIZE" in os.environ))
    deepspeed_config(cfg)
    validation.check(cfg)
    return cfg, task, args


def check_layout(cfg, task, world: int, told: bool = True) -> None:
    """``parallel.sp_size`` against ``world`` processes and the model, then the shards against the
    ``world / sp_size`` data-parallel ranks and their loader workers."""
    sp = cfg.parallel.sp_size
    if world < 1:
        raise UserError(f"--world-size: must be >= 1, got {world}")
    if world % sp:
        hint = "" if told else " (checked for 1 process: add --world-size N for a run of N)"
        raise UserError(f"config parallel.sp_size: {sp} does not divide the world size {world}{hint}")
    task.check_parallel(sp)
    check_shards(cfg.data, world // sp)


def main(argv: list[str] | None = None) -> None:
    rank0 = os.environ.get("RANK", "0") == "0"
    try:
        cfg, task, args = _prepare(argv)
    except UserError:
        if rank0:
            raise
        raise SystemExit(EXIT_BAD_INPUT) from None  # every rank finds it; rank 0 alone says it
    done = steps_done(cfg)
    if done >= cfg.schedule.steps:  # before the slow imports: a finished run answers at once
        if rank0:
            log.info(finished_line(cfg, done))
        raise SystemExit(EXIT_FINISHED if args.check else 0)
    if args.check:
        log.info("%s: %d of %d steps done", cfg.run.dir, done, cfg.schedule.steps)
        return
    if rank0:  # the run's first line, before the slow imports (DeepSpeed: ~10 s on a busy CPU)
        world = os.environ.get("WORLD_SIZE", "1")
        log.info("%s: config OK (%s, %s, %s) -> %s; importing DeepSpeed", cfg.task.name,
                 cfg.model.preset or cfg.model.init, plural(cfg.schedule.steps, "step"),
                 plural(int(world), "process", "processes"), cfg.run.dir)  # fmt: skip
    # DeepSpeed 0.19 calls collectives torch 2.13 renamed; one FutureWarning per call site drowns the log.
    warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)
    start = time.perf_counter()
    import deepspeed  # noqa: F401 - only after the config is known good; timed for the start-up log

    from megavg.train.loop import train

    if rank0:
        log.info("DeepSpeed imported (%.1f s)", time.perf_counter() - start)

    code = train(cfg, task)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    run_cli(main)
