"""Read a DeepSpeed ZeRO-3 checkpoint tag one tensor (or one range of a tensor) at a time.

Layout written by DeepSpeed 0.19 (``engine.save_checkpoint`` under ZeRO stage 3, world size ``N``)::

    zero_pp_rank_R_mp_rank_00_model_states.pt   param_shapes: one {name: shape} per optimizer sub-group,
                                                in flat order; frozen_param_shapes / _fragments (absent
                                                with exclude_frozen); buffers in "module"; lr_scheduler,
                                                global_steps, client state ("step")
    zero_pp_rank_R_mp_rank_00_optim_states.pt   optimizer_state_dict: fp32_flat_groups (one flat fp32
                                                tensor per sub-group) and the torch optimizer state
                                                (per sub-group: exp_avg, exp_avg_sq flat like the group;
                                                step scalar)

Every parameter of ``numel`` elements is cut into ``N`` chunks of ``ceil(numel / N)`` elements (the last
ones zero-padded); rank ``R``'s flat group is the concatenation of its chunk of every parameter of the
sub-group, in ``param_shapes`` order. So element ``i`` of a parameter lives on rank ``i // chunk`` at
``start_of_param_in_group + i % chunk``. Frozen parameters, when saved, are one padded chunk per rank.

Per-parameter flat fp32 state is addressed by a *key*: ``"param"`` (the fp32 master weights) or any key
of the optimizer state whose tensors are flat like the group (``exp_avg``, ``exp_avg_sq``, and whatever
else a later feature stores per parameter, e.g. EMA weights). Scalar optimizer state (``step``) is
returned as-is by :meth:`ZeroCheckpoint.scalar_state`.

Memory: rank files are opened with ``torch.load(mmap=True, weights_only=True)``, so nothing is read until
a slice is copied out, and after each copy the pages just read are handed back to the kernel
(``madvise(MADV_DONTNEED)`` on Linux): reading a tensor costs that tensor, not the rank files.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megavg.utils.errors import UserError

OPTIM_RE = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$")  # bf16 runs: prefixed
MODEL_NAME = "zero_pp_rank_{}_mp_rank_00_model_states.pt"
PARAM = "param"


def partition_numel(numel: int, world: int) -> int:
    """Elements per rank of a ZeRO-3 parameter of ``numel`` elements (the last chunks zero-padded)."""
    return math.ceil(numel / world)


def _safe_globals() -> list:
    """DeepSpeed objects pickled into the optimizer files besides tensors (allowed for weights_only)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return [LossScaler, ZeroStageEnum]


def load_mapped(path: Path) -> dict:
    """``torch.load`` of a DeepSpeed file, memory-mapped (tensors are read only when touched)."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, an unexpected pickled type...
        raise UserError(
            f"{path}: unreadable DeepSpeed checkpoint file ({type(err).__name__}: {err})"
        ) from None


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_MADV_DONTNEED = 4


def release_pages(view: torch.Tensor) -> None:
    """Drop the resident pages under ``view`` (a slice of a memory-mapped, never written tensor); they
    are re-read from the file if touched again. A no-op off Linux."""
    if _LIBC is None or view.numel() == 0:
        return
    page = mmap.PAGESIZE
    start = view.data_ptr() // page * page
    end = view.data_ptr() + view.numel() * view.element_size()
    _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


@dataclass(frozen=True)
class Placement:
    """Where one parameter sits: sub-group ``group`` (None: a frozen fragment), element ``offset`` of that
    rank-local flat group, ``numel`` elements in all, ``shape``."""

    group: int | None
    offset: int
    numel: int
    shape: torch.Size


class ZeroCheckpoint:
    """One ZeRO-3 checkpoint tag folder, read per tensor. See the module docstring."""

    def __init__(self, tag_dir: str | Path) -> None:
        self.dir = Path(tag_dir)
        found = [m for p in self.dir.glob("*_optim_states.pt") if (m := OPTIM_RE.match(p.name))]
        ranks = sorted(int(m.group(2)) for m in found)
        self._optim_prefix = (found[0].group(1) or "") if found else ""
        if not ranks or ranks != list(range(len(ranks))):
            raise UserError(f"{self.dir}: not a complete ZeRO checkpoint (optimizer files of ranks {ranks})")
        self.world_size = len(ranks)
        self.meta = load_mapped(self.dir / MODEL_NAME.format(0))
        for key in ("param_shapes", "buffer_names", "module"):
            if key not in self.meta:
                raise UserError(
                    f"{self.dir / MODEL_NAME.format(0)}: not a ZeRO model-state file (no {key!r})"
                )
        self._optim: dict[int, dict] = {}
        self._model: dict[int, dict] = {0: self.meta}
        self.placements = self._place()

    # ----- layout -----------------------------------------------------------------------------------
    def _place(self) -> OrderedDict[str, Placement]:
        places: OrderedDict[str, Placement] = OrderedDict()
        for group, shapes in enumerate(self.meta["param_shapes"]):
            offset = 0
            for name, shape in shapes.items():
                numel = torch.Size(shape).numel()
                places[name] = Placement(group, offset, numel, torch.Size(shape))
                offset += partition_numel(numel, self.world_size)
        for name, shape in (self.meta.get("frozen_param_shapes") or {}).items():
            if self.meta.get("frozen_param_fragments") is not None:
                places[name] = Placement(None, 0, torch.Size(shape).numel(), torch.Size(shape))
        return places

    @property
    def param_shapes(self) -> OrderedDict[str, torch.Size]:
        """Shapes of the trainable parameters (those the optimizer owns), in flat order."""
        return OrderedDict((n, p.shape) for n, p in self.placements.items() if p.group is not None)

    @property
    def frozen_shapes(self) -> dict[str, torch.Size]:
        """Shapes of the frozen parameters the checkpoint holds (empty with ``exclude_frozen``)."""
        return {n: p.shape for n, p in self.placements.items() if p.group is None}

    def buffers(self) -> dict[str, torch.Tensor]:
        """The module's buffers (saved whole by every rank; rank 0's)."""
        module = self.meta["module"]
        return {name: module[name] for name in self.meta["buffer_names"] if name in module}

    # ----- per-rank files ---------------------------------------------------------------------------
    def optim_state(self, rank: int) -> dict:
        """Rank ``rank``'s ``optimizer_state_dict`` entry (memory-mapped)."""
        if rank not in self._optim:
            path = self.dir / f"{self._optim_prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
            state = load_mapped(path).get("optimizer_state_dict")
            if not isinstance(state, dict) or "fp32_flat_groups" not in state:
                raise UserError(f"{path}: not a ZeRO-3 optimizer file (no fp32_flat_groups)")
            if state.get("partition_count") != self.world_size:
                raise UserError(
                    f"{path}: written by {state.get('partition_count')} ranks, folder has {self.world_size}"
                )
            self._optim[rank] = state
        return self._optim[rank]

    def _model_state(self, rank: int) -> dict:
        if rank not in self._model:
            self._model[rank] = load_mapped(self.dir / MODEL_NAME.format(rank))
        return self._model[rank]

    def _torch_state(self, rank: int, group: int) -> dict:
        """Torch optimizer state of sub-group ``group`` (state entries are numbered over param groups)."""
        inner = self.optim_state(rank)["optimizer_state_dict"]
        ids = [i for g in inner["param_groups"] for i in g["params"]]
        return inner["state"].get(ids[group], {}) if group < len(ids) else {}

    def flat_keys(self) -> list[str]:
        """Keys of the per-parameter flat fp32 state: ``"param"`` then the optimizer's (``exp_avg``, ...)."""
        flat = self.optim_state(0)["fp32_flat_groups"][0]
        state = self._torch_state(0, 0)
        extra = [k for k, v in state.items() if torch.is_tensor(v) and v.shape == flat.shape]
        return [PARAM, *extra]

    def scalar_state(self) -> dict[str, Any]:
        """Optimizer state that is not per-parameter (e.g. Adam's ``step``), from rank 0, sub-group 0."""
        keys = set(self.flat_keys())
        return {k: v for k, v in self._torch_state(0, 0).items() if k not in keys}

    def param_groups(self) -> list[dict]:
        """The saved optimizer's param groups (hyperparameters; ``params`` are indices)."""
        return self.optim_state(0)["optimizer_state_dict"]["param_groups"]

    def _source(self, rank: int, name: str, key: str) -> tuple[torch.Tensor, int]:
        """The 1-D tensor holding rank ``rank``'s chunk of ``name``/``key``, and the chunk's offset in it."""
        place = self.placements[name]
        if place.group is None:
            if key != PARAM:
                raise UserError(f"{self.dir}: frozen parameter {name} has no optimizer state {key!r}")
            return self._model_state(rank)["frozen_param_fragments"][name].reshape(-1), 0
        if key == PARAM:
            return self.optim_state(rank)["fp32_flat_groups"][place.group], place.offset
        state = self._torch_state(rank, place.group)
        if key not in state:
            raise UserError(f"{self.dir}: no optimizer state {key!r} in the files of rank {rank}")
        return state[key], place.offset

    # ----- reading ----------------------------------------------------------------------------------
    def read_range(self, name: str, start: int, stop: int, key: str = PARAM) -> torch.Tensor:
        """Elements ``[start, stop)`` of the flattened (unpadded) ``name``/``key``, as a new fp32 tensor;
        only the ranks holding them are touched."""
        if name not in self.placements:
            raise UserError(f"{self.dir}: no parameter {name!r} in the checkpoint")
        numel = self.placements[name].numel
        if not 0 <= start <= stop <= numel:
            raise ValueError(f"range [{start}, {stop}) outside {name} ({numel} elements)")
        chunk = partition_numel(numel, self.world_size)
        out = torch.empty(stop - start, dtype=torch.float32)
        pos = start
        while pos < stop:  # one iteration per rank overlapping [start, stop)
            rank, within = divmod(pos, chunk)
            end = min(stop, (rank + 1) * chunk)
            source, offset = self._source(rank, name, key)
            view = source[offset + within : offset + within + end - pos]
            out[pos - start : end - start].copy_(view)
            release_pages(view)
            pos = end
        return out

    def read(self, name: str, key: str = PARAM) -> torch.Tensor:
        """The whole tensor ``name``/``key`` in its shape (fp32)."""
        place = self.placements.get(name)
        if place is None:
            raise UserError(f"{self.dir}: no parameter {name!r} in the checkpoint")
        return self.read_range(name, 0, place.numel, key).view(place.shape)

    def lazy(self, name: str, key: str = PARAM) -> LazyZeroTensor:
        """A lazy tensor (:func:`megavg.utils.lazy.materialize`) reading ``name``/``key`` when asked."""
        return LazyZeroTensor(self, name, key, self.placements[name].shape)

    def state_dict(self, key: str = PARAM) -> OrderedDict[str, Any]:
        """Buffers, then every saved parameter as a :class:`LazyZeroTensor` (frozen ones only when saved).

        ``key`` picks the flat state the trainable parameters are read from: ``"param"`` (the fp32
        master weights) or another per-parameter key (``"ema"``: the EMA weights); frozen parameters and
        buffers have no optimizer state and are always read as saved."""
        state: OrderedDict[str, Any] = OrderedDict(self.buffers())
        for name, place in self.placements.items():
            state[name] = self.lazy(name, key if place.group is not None else PARAM)
        for alias, target in (self.meta.get("shared_params") or {}).items():
            if target in state:
                state[alias] = state[target]
        return state


@dataclass(frozen=True)
class LazyZeroTensor:
    """One fp32 tensor of a :class:`ZeroCheckpoint`, read (only its ranges) by ``contiguous()``."""

    checkpoint: ZeroCheckpoint
    name: str
    key: str
    shape: torch.Size
    dtype: torch.dtype = torch.float32

    def contiguous(self) -> torch.Tensor:
        return self.checkpoint.read(self.name, self.key)
