"""Turn a complete ZeRO-3 checkpoint of a run (the latest, or any kept one) into a megavg model folder.

    python tools/consolidate.py RUN_DIR --out FOLDER [--raw] [--step N | --tag step_NNNNNNNN]

Without ``--step``/``--tag`` the checkpoint named by ``checkpoints/latest`` is exported; with them an
intermediate one (``checkpoint.keep`` decides how many a run keeps), e.g. for a training curve. A tag that
is not there, or was left incomplete by a crash, is an error listing the complete ones.

A run with ``model.ema`` exports the EMA of the trainable weights (frozen ones as they are), ``--raw``
the trained weights themselves; the LoRA task then merges the EMA (or raw) adapters.

The trained tensors are lazy (:mod:`megavg.train.zero_checkpoint`): the writer materialises them one
safetensors shard at a time, and each tensor reads only its pieces of the memory-mapped rank partitions
(peak memory: one output shard plus one tensor, whatever the model and world size). Frozen parameters
left out of the checkpoint (``checkpoint.exclude_frozen``) come from ``model.init``, also read lazily,
or from the seeded initial model as the trainer built it. The task may transform the result
(``Task.export_state``: the AE-Adapt-V LoRA task merges its adapters into the weights). Transformer
Engine ``_extra_state`` entries are dropped, and the result is checked against the model's keys and
shapes before it is written (atomically; safetensors, sharded past 4 GiB).
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import torch

from megavg.models import registry
from megavg.tasks import build_task
from megavg.tasks.base import model_args
from megavg.train import ckpt_integrity
from megavg.train.checkpoint import TAG_RE, complete_tags, read_latest, tag_of
from megavg.train.config import load_config
from megavg.train.ema import EMA_KEY
from megavg.train.zero_checkpoint import PARAM, ZeroCheckpoint
from megavg.utils.errors import UserError, run_cli
from megavg.utils.logging import get_logger
from megavg.utils.schema import to_dict
from megavg.utils.torchload import first_line

# What reading a damaged DeepSpeed file raises (torch zip/pickle errors, DeepSpeed's own asserts and lookups).
UNREADABLE = (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AssertionError)
UNREADABLE += (pickle.UnpicklingError,)
log = get_logger(__name__)


def trained_state(ckpt_dir: Path, tag: str, raw: bool = False) -> dict[str, Any]:
    """fp32 weights of checkpoint ``tag`` (without ``_extra_state``) as lazy tensors
    (:func:`megavg.utils.lazy.materialize`) that read only the rank partitions holding them: the
    EMA of the trainable weights when the checkpoint holds one (``model.ema``) unless ``raw``, else the
    weights themselves. Every rank file is opened (memory-mapped, nothing read) here, so a damaged one is
    reported before writing."""
    try:
        ckpt = ZeroCheckpoint(ckpt_dir / tag)
        for rank in range(ckpt.world_size):
            ckpt.optim_state(rank)
        key = EMA_KEY if not raw and EMA_KEY in ckpt.flat_keys() else PARAM
        state = ckpt.state_dict(key)
    except UNREADABLE as err:  # a legacy tag (no manifest) damaged inside a file
        raise UserError(f"{ckpt_dir / tag}: not a readable ZeRO checkpoint ({first_line(err)})") from None
    log.info(f"exporting the {'EMA' if key == EMA_KEY else 'raw'} weights of {ckpt_dir / tag}")
    return {k: v for k, v in state.items() if not k.endswith("_extra_state")}


def checkpoint_config(path: Path):
    """The training config stored in a checkpoint; any problem is a UserError naming ``path``."""
    try:
        return load_config(path)
    except UserError as err:
        raise UserError(str(err) if str(err).startswith(str(path)) else f"{path}: {err}") from None


def initial_state(cfg, args) -> dict[str, Any]:
    """The weights the run started from: ``model.init`` (lazy: read as written), else the model built
    under the run's seed."""
    if cfg.model.init:
        return registry.load_state_dict(cfg.model.init, lazy=True)
    torch.manual_seed(cfg.schedule.seed)
    return registry.build(args).state_dict()


def pick_tag(run_dir: str | Path, tag: str | None = None) -> str:
    """``tag`` if it is a complete checkpoint of the run (UserError listing the complete ones otherwise),
    or, for None, the tag ``latest`` names."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    latest = read_latest(ckpt_dir) if ckpt_dir.is_dir() else None
    if latest is None:
        raise UserError(f"{run_dir}: no complete checkpoint (no {ckpt_dir / 'latest'})")
    if tag is None:
        return latest
    if not TAG_RE.match(tag):
        raise UserError(f"--tag {tag!r}: not a checkpoint tag (expected step_NNNNNNNN)")
    complete = complete_tags(ckpt_dir)
    if tag not in complete:
        state = "incomplete (a crashed save)" if (ckpt_dir / tag).is_dir() else "not there"
        raise UserError(f"{ckpt_dir / tag}: {state}; complete checkpoints: {', '.join(sorted(complete))}")
    return tag


def consolidate(
    run_dir: str | Path, out: str | Path, raw: bool = False, keep_fp8: bool = False, tag: str | None = None
) -> Path:
    """Write the model of ``run_dir``'s checkpoint ``tag`` (default: the latest) to ``out``: its EMA
    weights when it has them (``model.ema``), unless ``raw``; returns ``out``. The folder's config has
    runner-side layer settings (``linear``/``attention`` ``auto``, FP8 off unless ``keep_fp8``)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    tag = pick_tag(run_dir, tag)
    ckpt_integrity.verify(ckpt_dir / tag)  # sizes + hashes against the manifest: names a damaged file
    cfg = checkpoint_config(ckpt_dir / tag / "config.yaml")
    args = registry.runner_args(model_args(cfg.model), keep_fp8)  # no training-only layer settings
    state = trained_state(ckpt_dir, tag, raw)
    with torch.device("meta"):
        model = registry.build(args)
    state = build_task(cfg).export_state(state, lambda: initial_state(cfg, args), set(model.state_dict()))
    registry.check_state_dict(model, state, f"{ckpt_dir / tag}")
    return registry.save_state(registry.family_of(args), to_dict(args), state, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tools/consolidate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a training run.dir (holds checkpoints/latest)")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument(
        "--raw", action="store_true", help="export the trained weights, not their EMA (model.ema runs)"
    )
    parser.add_argument("--fp8", action="store_true",
                        help="keep the run's FP8 setting (the exported model then needs TE)")  # fmt: skip
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="export the checkpoint of this optimizer step")
    which.add_argument("--tag", help="export this checkpoint tag (step_NNNNNNNN; default: latest)")
    args = parser.parse_args(argv)
    if args.step is not None and args.step < 0:
        raise UserError(f"--step {args.step}: must be >= 0")
    tag = tag_of(args.step) if args.step is not None else args.tag
    out = consolidate(args.run_dir, args.out, raw=args.raw, keep_fp8=args.fp8, tag=tag)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
