"""``python -m megavg.train --config FILE [section.key=value ...]``: validate, then train.

Everything the user controls (YAML keys and types, task and model args, DeepSpeed JSON, data path) is
checked before any process group exists: a mistake is one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

from megavg.data.shards import list_shards
from megavg.tasks import build_task
from megavg.train import validation
from megavg.train.config import load_config
from megavg.train.engine import deepspeed_config
from megavg.utils.errors import UserError, run_cli
from megavg.utils.logging import get_logger

log = get_logger("megavg.train")
EXIT_FINISHED = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m megavg.train", description=__doc__)
    parser.add_argument("--config", help="YAML file (lists only what differs from the defaults)")
    parser.add_argument("--check", action="store_true",
                        help="only validate and say the run's state: exit 0 if steps remain, "
                             f"{EXIT_FINISHED} if the run already reached schedule.steps")  # fmt: skip
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by `deepspeed`
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser.parse_args(argv)


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
    list_shards(cfg.data.shards, cfg.data.kind)  # the data path exists and holds shards
    deepspeed_config(cfg)
    validation.check(cfg)
    return cfg, task, args


def agreed_steps_done(cfg) -> int:
    """:func:`steps_done` under a launcher (collective: starts the process group): rank 0 alone reads
    and hashes, every rank gets its answer. Each rank deciding for itself hashed the whole checkpoint W
    times, and a rank whose read failed went on to train while the others had exited."""
    import torch.distributed as dist

    from megavg.train.engine import init_distributed

    init_distributed(cfg.parallel.backend, cfg.parallel.timeout_minutes)
    answer: list = [None]
    if dist.get_rank() == 0:
        try:
            answer[0] = steps_done(cfg)
        except UserError as err:  # e.g. a `latest` naming no folder: every rank reports it
            answer[0] = err
    dist.broadcast_object_list(answer, src=0)
    if isinstance(answer[0], UserError):
        raise answer[0]
    return answer[0]


def main(argv: list[str] | None = None) -> None:
    cfg, task, args = _prepare(argv)
    rank0 = os.environ.get("RANK", "0") == "0"
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args.check
    if not launched:  # one process: before the slow imports, a finished run answers at once
        done = steps_done(cfg)
        if done >= cfg.schedule.steps:
            log.info(finished_line(cfg, done))
            raise SystemExit(EXIT_FINISHED if args.check else 0)
        if args.check:
            log.info("%s: %d of %d steps done", cfg.run.dir, done, cfg.schedule.steps)
            return
    if rank0:  # the run's first line, before the slow imports (DeepSpeed: ~10 s on a busy CPU)
        world = os.environ.get("WORLD_SIZE", "1")
        log.info("%s: config OK (%s, %d steps, %s processes) -> %s; importing DeepSpeed", cfg.task.name,
                 cfg.model.preset or cfg.model.init, cfg.schedule.steps, world, cfg.run.dir)  # fmt: skip
    # DeepSpeed 0.19 calls collectives torch 2.13 renamed; one FutureWarning per call site drowns the log.
    warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)
    start = time.perf_counter()
    import deepspeed  # noqa: F401 - only after the config is known good; timed for the start-up log

    from megavg.train.loop import train

    if rank0:
        log.info("DeepSpeed imported (%.1f s)", time.perf_counter() - start)
    if launched and (done := agreed_steps_done(cfg)) >= cfg.schedule.steps:
        if rank0:
            log.info(finished_line(cfg, done))
        from megavg.parallel import state

        state.shutdown()
        raise SystemExit(0)

    code = train(cfg, task)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    run_cli(main)
