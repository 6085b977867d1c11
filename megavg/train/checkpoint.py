"""Sharded DeepSpeed checkpoints that are complete or absent.

Layout under ``run.dir/checkpoints``::

    latest                      the tag of the newest COMPLETE checkpoint (written last, atomically)
    step_00000100/              DeepSpeed's per-rank model/optimizer shards
        rng/rank_00000.pt       each rank's torch / python RNG states
        config.yaml             the resolved training config
        manifest.json           size + SHA-256 of every file above (megavg.train.ckpt_integrity)
    step_00000200/ ...

Order of a save: every rank writes its shards -> barrier -> the tag is sealed (each rank hashes a share
of its files, rank 0 writes ``manifest.json``) -> rank 0 moves ``latest`` -> older tags beyond ``keep``
(and partial tags newer than ``latest``, left by a crash) are removed -> barrier. A crash at any point
leaves ``latest`` naming a complete checkpoint. The data position is the step number: loaders are
deterministic given (seed, data-parallel rank, start step).

Resume verifies before it loads (:func:`choose_tag`): the tag named by ``latest`` if its files match its
manifest, else (one warning) the newest older intact tag, the same choice on every rank. A tag newer than
``latest`` counts only when sealed (its manifest is written after all of its files). A checkpoint of
another world size is re-partitioned on load (:mod:`megavg.train.elastic`).
"""

from __future__ import annotations

import random
import re
import shutil
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from megavg.layers.fp8 import load_module_state
from megavg.train import ckpt_integrity
from megavg.train.elastic import check_same_model, load_resharded
from megavg.train.zero_checkpoint import ZeroCheckpoint
from megavg.utils.errors import UserError
from megavg.utils.io import atomic_file
from megavg.utils.logging import get_logger
from megavg.utils.torchload import load_weights_only

log = get_logger(__name__)
TAG_RE = re.compile(r"^step_(\d{8})$")


def tag_of(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    return int(TAG_RE.match(tag).group(1))


def read_latest(ckpt_dir: Path) -> str | None:
    """The tag named by ``latest``, or None when there is no complete checkpoint (UserError naming
    ``latest`` when it holds something else than the name of an existing tag folder)."""
    path = ckpt_dir / "latest"
    if not path.is_file():
        return None
    tag = path.read_bytes()[:200].decode("utf-8", errors="replace").strip()
    if not TAG_RE.match(tag):
        raise UserError(f"{path}: {tag[:40]!r} is not a checkpoint tag (expected step_NNNNNNNN)")
    if not (ckpt_dir / tag).is_dir():
        raise UserError(f"{path}: names {tag!r}, which is not a checkpoint folder in {ckpt_dir}")
    return tag


def _candidates(ckpt_dir: Path) -> tuple[list[str], str]:
    """Tags to try on resume, newest first, and a note when ``latest`` is unusable. Tags up to the one
    ``latest`` names were complete when ``latest`` passed them; a newer tag is complete only if sealed."""
    note = ""
    try:
        latest = read_latest(ckpt_dir)
    except UserError as err:
        latest, note = None, str(err)
    tags = sorted((p.name for p in ckpt_dir.iterdir() if TAG_RE.match(p.name)), reverse=True)
    limit = step_of(latest) if latest else -1
    usable = [t for t in tags if step_of(t) <= limit or (ckpt_dir / t / ckpt_integrity.MANIFEST).is_file()]
    return usable, note


def complete_tags(ckpt_dir: Path) -> list[str]:
    """The tags of ``ckpt_dir`` that were complete when written (see :func:`_candidates`), newest first."""
    return _candidates(ckpt_dir)[0]


def choose_tag(ckpt_dir: Path) -> str | None:
    """The tag to resume from (collective; the same on every rank): the newest intact candidate. Skipped
    tags are reported in one warning; UserError when checkpoints exist but none is intact."""
    picked: list = [_candidates(ckpt_dir) if dist.get_rank() == 0 and ckpt_dir.is_dir() else ([], "")]
    dist.broadcast_object_list(picked, src=0)
    candidates, note = picked[0]
    skipped = [note] if note else []
    for tag in candidates:
        found = ckpt_integrity.agreed_problems(ckpt_dir / tag)
        if not found:
            if skipped and dist.get_rank() == 0:
                log.warning(f"skipping unreadable checkpoint(s): {'; '.join(skipped)}; resuming from {tag}")
            return tag
        skipped.append(f"{tag}: {found[0]}")
    if skipped:
        raise UserError(f"{ckpt_dir}: no intact checkpoint to resume from ({'; '.join(skipped)})")
    return None


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

    def save(self, engine, step: int, config_yaml: str, aux: dict | None = None) -> str:
        """Write checkpoint ``step`` on every rank (collective); returns its tag. ``aux``: auxiliary
        engines by name (:meth:`megavg.tasks.base.Task.setup`), each saved under ``<tag>/<name>/``."""
        tag = tag_of(step)
        rank = dist.get_rank()
        if rank == 0 and (self.dir / tag).exists():  # an unreadable tag skipped on resume: no stale files
            shutil.rmtree(self.dir / tag)
        dist.barrier()
        engine.save_checkpoint(
            str(self.dir),
            tag=tag,
            client_state={"step": step},
            save_latest=False,
            exclude_frozen_parameters=self.exclude_frozen,
        )
        for name, aux_engine in (aux or {}).items():
            aux_engine.save_checkpoint(str(self.dir / tag), tag=name, client_state={}, save_latest=False)
        with atomic_file(self.dir / tag / "rng" / f"rank_{rank:05d}.pt") as tmp:
            torch.save(_rng_state(), tmp)
        if rank == 0:
            with atomic_file(self.dir / tag / "config.yaml") as tmp:
                tmp.write_text(config_yaml)
        dist.barrier()
        ckpt_integrity.seal(self.dir / tag)
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

    def load(self, engine, aux: dict | None = None) -> int:
        """Restore the newest intact checkpoint (:func:`choose_tag`) into ``engine`` (and the ``aux``
        engines); returns its step (0 when there is none). A checkpoint written at another world size is
        re-partitioned (:mod:`megavg.train.elastic`)."""
        tag = choose_tag(self.dir)
        if tag is None:
            return 0
        # module state through megavg.layers.fp8: TE FP8 scaling state kept or reset (reset_amax_on_load)
        strict = not self.exclude_frozen
        custom = partial(load_module_state, strict=strict)
        client = self._restore(engine, self.dir, tag, load_module_strict=strict, custom_load_fn=custom)
        for name, aux_engine in (aux or {}).items():
            if not (self.dir / tag / name).is_dir():
                raise UserError(f"{self.dir / tag / name}: missing; checkpoint {tag} has no {name} state")
            self._restore(aux_engine, self.dir / tag, name)
        rng = self.dir / tag / "rng" / f"rank_{dist.get_rank():05d}.pt"
        if rng.is_file():  # listed in the manifest (checked); optional in a legacy tag; new ranks: seeded
            _set_rng_state(load_weights_only(rng))
        log.info(f"resumed from {self.dir / tag} (step {client['step']})")
        return int(client["step"])

    def _restore(self, engine, folder: Path, tag: str, **load_kwargs) -> dict:
        """DeepSpeed tag ``folder/tag`` into ``engine``: DeepSpeed's own load at the same world size, else
        re-partitioned (ZeRO-3 only); returns the client state."""
        zero3 = hasattr(getattr(engine, "optimizer", None), "fp16_partitioned_groups_flat")
        ckpt = ZeroCheckpoint(folder / tag) if zero3 else None
        saved = ckpt.world_size if ckpt else len(list((folder / tag).glob("*_optim_states.pt")))
        if saved == dist.get_world_size():
            if ckpt is not None:
                check_same_model(ckpt, engine)  # DeepSpeed's own error would be a bare shape mismatch
            path, client = engine.load_checkpoint(
                str(folder), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True, **load_kwargs
            )
            if path is None:
                raise UserError(f"{folder / tag}: incomplete DeepSpeed checkpoint")
            return client
        if ckpt is None:
            raise UserError(
                f"{folder / tag}: written by {saved} ranks, this run has {dist.get_world_size()}; "
                "resuming on another world size needs ZeRO stage 3"
            )
        client = load_resharded(engine, ckpt)
        log.info(f"re-partitioned {folder / tag} from {saved} to {dist.get_world_size()} ranks")
        return client
