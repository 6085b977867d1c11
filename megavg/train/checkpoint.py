"""Sharded DeepSpeed checkpoints that are complete or absent.

Layout under ``run.dir/checkpoints``::

    latest                      the tag of the newest COMPLETE checkpoint (written last, atomically)
    step_00000100/              DeepSpeed's per-rank model/optimizer shards
        rng/rank_00000.pt       each rank's torch / python RNG states
        config.yaml             the resolved training config
    step_00000200/ ...

Order of a save: every rank writes its shards -> barrier -> rank 0 moves ``latest`` -> older tags beyond
``keep`` (and partial tags newer than ``latest``, left by a crash) are removed -> barrier. A crash at any
point leaves ``latest`` naming a complete checkpoint. The data position is the step number: loaders are
deterministic given (seed, data-parallel rank, start step). A checkpoint of another world size is
re-partitioned on load (:mod:`megavg.train.elastic`).
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from megavg.train.elastic import check_same_model, load_resharded
from megavg.train.zero_checkpoint import ZeroCheckpoint
from megavg.utils.errors import UserError
from megavg.utils.io import atomic_file
from megavg.utils.logging import get_logger

log = get_logger(__name__)
TAG_RE = re.compile(r"^step_(\d{8})$")


def tag_of(step: int) -> str:
    return f"step_{step:08d}"


def read_latest(ckpt_dir: Path) -> str | None:
    """The tag named by ``latest``, or None when there is no complete checkpoint."""
    path = ckpt_dir / "latest"
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    if not TAG_RE.match(tag) or not (ckpt_dir / tag).is_dir():
        raise UserError(f"{path}: names {tag!r}, which is not a checkpoint folder in {ckpt_dir}")
    return tag


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Saves and restores the DeepSpeed ``engine`` plus RNG and step under ``run_dir/checkpoints``."""

    def __init__(self, run_dir: Path, keep: int, exclude_frozen: bool) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep
        self.exclude_frozen = exclude_frozen

    def save(self, engine, step: int, config_yaml: str) -> str:
        """Write checkpoint ``step`` on every rank (collective); returns its tag."""
        tag = tag_of(step)
        engine.save_checkpoint(
            str(self.dir),
            tag=tag,
            client_state={"step": step},
            save_latest=False,
            exclude_frozen_parameters=self.exclude_frozen,
        )
        rank = dist.get_rank()
        with atomic_file(self.dir / tag / "rng" / f"rank_{rank:05d}.pt") as tmp:
            torch.save(_rng_state(), tmp)
        if rank == 0:
            with atomic_file(self.dir / tag / "config.yaml") as tmp:
                tmp.write_text(config_yaml)
        dist.barrier()
        if rank == 0:
            with atomic_file(self.dir / "latest") as tmp:
                tmp.write_text(tag + "\n")
            self._prune(step)
            log.info(f"saved checkpoint {self.dir / tag}")
        dist.barrier()
        return tag

    def _prune(self, newest: int) -> None:
        """Remove complete tags beyond ``keep`` and any tag newer than ``newest`` (a crashed save)."""
        steps = sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := TAG_RE.match(p.name)))
        done = [s for s in steps if s <= newest]
        for s in [s for s in steps if s > newest] + done[: -self.keep]:
            shutil.rmtree(self.dir / tag_of(s), ignore_errors=True)

    def load(self, engine) -> int:
        """Restore the ``latest`` checkpoint into ``engine``; returns its step (0 when there is none).

        A checkpoint written at another world size is re-partitioned (:mod:`megavg.train.elastic`)."""
        tag = read_latest(self.dir)
        if tag is None:
            return 0
        zero3 = hasattr(engine.optimizer, "fp16_partitioned_groups_flat")
        ckpt = ZeroCheckpoint(self.dir / tag) if zero3 else None
        saved = ckpt.world_size if ckpt else len(list((self.dir / tag).glob("*_optim_states.pt")))
        if saved == dist.get_world_size():
            if ckpt is not None:
                check_same_model(ckpt, engine)  # DeepSpeed's own error would be a bare shape mismatch
            client = self._load_same_world(engine, tag)
        elif ckpt is None:
            raise UserError(
                f"{self.dir / tag}: written by {saved} ranks, this run has {dist.get_world_size()}; "
                "resuming on another world size needs ZeRO stage 3"
            )
        else:
            client = load_resharded(engine, ckpt)
            log.info(f"re-partitioned {self.dir / tag} from {saved} to {dist.get_world_size()} ranks")
        rng = self.dir / tag / "rng" / f"rank_{dist.get_rank():05d}.pt"
        if rng.is_file():  # on a bigger world the new ranks keep their seeded RNG
            _set_rng_state(torch.load(rng, weights_only=True))
        log.info(f"resumed from {self.dir / tag} (step {client['step']})")
        return int(client["step"])

    def _load_same_world(self, engine, tag: str) -> dict:
        path, client = engine.load_checkpoint(
            str(self.dir),
            tag=tag,
            load_module_strict=not self.exclude_frozen,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise UserError(f"{self.dir / tag}: incomplete DeepSpeed checkpoint")
        return client
