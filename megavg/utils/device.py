"""Rank -> compute device: the one place that turns a launcher's environment into a CUDA device.

A process learns its place on the node from ``LOCAL_RANK`` (torchrun, DeepSpeed, ``launchers/rank.sh``)
or, started by ``srun`` directly, ``SLURM_LOCALID``. Which CUDA device that is depends on what the process
can *see*: CUDA numbers the devices listed in ``CUDA_VISIBLE_DEVICES`` from 0, and SLURM sets that
variable per task when GPUs are bound to tasks (``--gpus-per-task``, ``--gpu-bind``, ``ConstrainDevices``
cgroups). The rules:

- the process sees at least ``LOCAL_WORLD_SIZE`` devices (all of the node's GPUs visible to every task):
  device ``LOCAL_RANK``;
- it sees fewer (SLURM bound its own GPU(s) to the task): device 0, the first of its own;
- it sees none while CUDA is asked for: one error line.

``"cuda"`` given without an index (``--device cuda``) means *this rank's* device, never ``cuda:0`` for
every rank; ``"cuda:N"`` is taken as written. Tests describe a node with :class:`CudaTable` (a fake CUDA
device table: how many GPUs the node has; ``CUDA_VISIBLE_DEVICES`` of the environment picks the visible
ones, as CUDA does) instead of the real ``torch.cuda``. It lives in ``megavg.utils`` because the
standalone runner's text encoder uses it too (the runner imports nothing of ``megavg.parallel``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megavg.utils.errors import UserError


@dataclass(frozen=True)
class CudaTable:
    """A node's CUDA devices as a process sees them. ``physical``: GPUs on the node; ``None`` reads the real
    ``torch.cuda`` (which already applies ``CUDA_VISIBLE_DEVICES``)."""

    physical: int | None = None

    def visible(self, env: Mapping[str, str]) -> int:
        """How many devices this process can address (``cuda:0`` .. ``cuda:visible-1``)."""
        if self.physical is None:
            return torch.cuda.device_count() if torch.cuda.is_available() else 0
        listed = env.get("CUDA_VISIBLE_DEVICES")
        if listed is None:
            return self.physical
        # CUDA stops at the first entry that names no device; SLURM writes plain indices
        count = 0
        for entry in listed.split(","):
            if not entry.strip().isdigit() or int(entry) >= self.physical:
                break
            count += 1
        return count


TABLE = CudaTable()  # the real torch.cuda; tests replace it with a fake table


def local_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's index on its node: ``LOCAL_RANK``, else ``SLURM_LOCALID``, else 0."""
    env = os.environ if env is None else env
    return int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0)))


def local_world_size(env: Mapping[str, str] | None = None) -> int | None:
    """Ranks on this node, when the launcher says (``LOCAL_WORLD_SIZE``; srun: ``SLURM_NTASKS_PER_NODE``)."""
    env = os.environ if env is None else env
    value = env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE", "")
    value = value.split("(")[0].split(",")[0]
    return int(value) if value.isdigit() else None


def local_cuda_index(env: Mapping[str, str] | None = None, table: CudaTable | None = None) -> int:
    """The CUDA device index of this rank (see the module docstring for the rules)."""
    env = os.environ if env is None else env
    visible, rank = (table or TABLE).visible(env), local_rank(env)
    shown = env.get("CUDA_VISIBLE_DEVICES", "unset")
    if visible == 0:
        raise UserError(
            f"device cuda: no CUDA device visible to local rank {rank} (CUDA_VISIBLE_DEVICES={shown})"
        )
    tasks = local_world_size(env)
    if tasks is not None and visible < tasks:
        return 0  # SLURM bound this task its own GPU(s): they are numbered from 0
    if rank < visible:
        return rank
    if visible == 1:
        return 0
    raise UserError(
        f"device cuda: local rank {rank} but only {visible} CUDA devices visible "
        f"(CUDA_VISIBLE_DEVICES={shown}); start one rank per GPU or bind one GPU per task"
    )


def resolve_device(
    name: str | torch.device, env: Mapping[str, str] | None = None, table: CudaTable | None = None
) -> torch.device:
    """``cpu`` -> cpu; ``cuda`` -> this rank's CUDA device; ``cuda:N`` -> as written; ``auto`` -> this rank's
    CUDA device when one is visible, else cpu."""
    device = str(name)
    if device == "auto":
        device = "cuda" if (table or TABLE).visible(os.environ if env is None else env) else "cpu"
    if device == "cuda":
        return torch.device("cuda", local_cuda_index(env, table))
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"device {device!r}: not a device (expected cpu, cuda, cuda:N or auto)") from None


def bind_local_device(env: Mapping[str, str] | None = None) -> torch.device:
    """Make this rank's CUDA device the current one (call once, before any CUDA work); cpu without CUDA."""
    device = resolve_device("auto", env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def collective_device() -> torch.device:
    """Where a tensor for the default process group's collectives lives: the current CUDA device under
    NCCL (it takes no CPU tensors), else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(flag: bool | torch.Tensor, *, every: bool, group=None, device: torch.device | None = None) -> bool:
    """One decision for every rank of ``group`` (default: all ranks) from each rank's own ``flag``: True when
    it holds on ``every`` rank (a MIN all-reduce) or, ``every=False``, on any rank (MAX). Collective: every
    rank of the group calls it at the same point; a decision that changes which collectives follow (CFG
    batched or sequential, stop now, skip a step) must go through it. A tensor ``flag`` is reduced on its
    own device; a bool on ``device`` (default :func:`collective_device`). One host sync."""
    if isinstance(flag, torch.Tensor):
        value = flag.float().reshape(1)
    else:
        value = torch.tensor([1.0 if flag else 0.0], device=device or collective_device())
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MIN if every else dist.ReduceOp.MAX, group=group)
    return bool(value.item())
