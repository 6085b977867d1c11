"""Process-group state: one place that builds the sequence-parallel groups and the data-parallel layout.

In the spirit of Megatron-Core's ``parallel_state``. The world of ``W`` ranks is split into ``W / sp``
sequence-parallel (SP) groups of ``sp`` *contiguous* ranks (inside a node, where all-to-all is fast) and
``sp`` data-parallel (DP) groups of ranks with the same SP rank::

    W = 4, sp = 2:   SP groups [0 1] [2 3]      DP groups [0 2] [1 3]

ZeRO-3 partitions parameters, gradients and optimizer state over all ``W`` ranks (the "sequence-data"
group, here the world), and DeepSpeed averages gradients over those ``W`` ranks. The SP layers follow the
SP-sum convention (per-rank gradients summed over the group equal the single-process gradient; see
``megavg.parallel.ulysses``), so the trainer back-propagates ``sp * loss``: the average over ``W`` ranks
is then the average over DP of the full-sample gradients. (Handing this module to DeepSpeed as ``mpu``
would let it do that scaling itself; with DeepSpeed 0.19.8 ZeRO-3 then produced wrong gradients in our
DP x SP test, while stage 0 was right, so the engine does not pass it.)
SP degree 1 means sequence parallelism is off: every rank is its own SP group.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch.distributed as dist

from megavg.utils.errors import UserError


@dataclass(frozen=True)
class _Groups:
    sp_size: int
    sp_group: dist.ProcessGroup
    dp_ranks: tuple[int, ...]


_STATE: _Groups | None = None


def initialize(sp_size: int = 1) -> None:
    """Build the SP groups and this rank's DP position (collective: every rank calls it with the same
    ``sp_size``)."""
    global _STATE
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized; call deepspeed.init_distributed first")
    world, rank = dist.get_world_size(), dist.get_rank()
    if sp_size < 1 or world % sp_size:
        raise UserError(f"parallel.sp_size={sp_size} does not divide the world size {world}")
    sp_group = None
    # new_group is collective: every rank creates every group, keeps the one it belongs to.
    for start in range(0, world, sp_size):
        ranks = list(range(start, start + sp_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            sp_group = group
    # DP "groups" (ranks with the same SP rank) need no process group: DeepSpeed reduces over the world.
    dp_ranks = tuple(range(rank % sp_size, world, sp_size))
    _STATE = _Groups(sp_size, sp_group, dp_ranks)


def destroy() -> None:
    """Forget the groups (the process groups themselves die with the default group)."""
    global _STATE
    _STATE = None


def shutdown() -> None:
    """End of a run: forget the groups and destroy every process group (call once, on every rank).

    Reference cycles still holding tensors that went through gloo collectives are collected first. Left
    to interpreter finalization, their release aborts the process with "terminate called without an
    active exception" (exit -6 after a finished run: 1 in 5 to 1 in 30 runs of the Ulysses test
    worker on torch 2.13 CPU; none in 100+ with this collection).
    """
    destroy()
    gc.collect()
    dist.destroy_process_group()


def _state() -> _Groups:
    if _STATE is None:
        raise RuntimeError("megavg.parallel.state is not initialized; call initialize(sp_size) first")
    return _STATE


# -- the getters the trainer uses ----------------------------------------------------------------------
def get_sequence_parallel_group() -> dist.ProcessGroup:
    return _state().sp_group


def get_data_parallel_world_size() -> int:
    """Ranks that see different samples (W / sp)."""
    return len(_state().dp_ranks)


def get_data_parallel_rank() -> int:
    """This rank's index among the ranks that see different samples (its loader shard)."""
    return _state().dp_ranks.index(dist.get_rank())
