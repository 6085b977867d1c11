"""``python -m megavg.train --config FILE [section.key=value ...]``: validate, then train.

Everything the user controls (YAML keys and types, task and model args, DeepSpeed JSON, data path) is
checked before any process group exists: a mistake is one ``error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import warnings

from megavg.data.shards import list_shards
from megavg.tasks import build_task
from megavg.train import validation
from megavg.train.config import load_config
from megavg.train.engine import deepspeed_config
from megavg.utils.errors import run_cli


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m megavg.train", description=__doc__)
    parser.add_argument("--config", help="YAML file (lists only what differs from the defaults)")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by `deepspeed`
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    return parser.parse_args(argv)


def prepare(argv: list[str] | None):
    """Parse and check everything; returns (config, task). Raises UserError on bad input."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    task = build_task(cfg)
    task.validate()
    list_shards(cfg.data.shards, cfg.data.kind)  # the data path exists and holds shards
    deepspeed_config(cfg)
    validation.check(cfg)
    return cfg, task


def main(argv: list[str] | None = None) -> None:
    cfg, task = prepare(argv)
    # DeepSpeed 0.19 calls collectives torch 2.13 renamed; one FutureWarning per call site drowns the log.
    warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)
    from megavg.train.loop import train  # imports deepspeed: only after the config is known good

    code = train(cfg, task)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    run_cli(main)
