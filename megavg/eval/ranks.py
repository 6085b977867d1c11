"""The ranks of a ``torchrun`` evaluation: each takes a share of the videos, results (or the first error)
are gathered.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) there is one rank and nothing is
initialised. Under it, a gloo process group joins the ranks (CPU objects are gathered, so gloo serves on
GPU machines too; models run on ``cuda:LOCAL_RANK`` when CUDA is available).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from megavg.utils.errors import UserError


@contextlib.contextmanager
def ranks() -> Iterator[None]:
    """Join the ``torchrun`` world for the duration of the block (a no-op for a single process)."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if launched:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        if launched:
            gc.collect()  # gloo-touched tensors freed before the group goes (see parallel.state.shutdown)
            dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def share(items: Sequence) -> list[int]:
    """Indices of ``items`` this rank handles (every world-th one, from its rank)."""
    return list(range(rank(), len(items), world()))


def shared(items: Sequence, work: Callable[[list[int]], list]) -> list:
    """``work(indices)`` -> one value per index, run on this rank's :func:`share` of ``items``; every rank's
    values in index order, on every rank (one ``all_gather_object``).

    A :class:`UserError` or ``OSError`` in any rank's share (a video that cannot be decoded, a file read
    or write that fails on one rank's filesystem) travels with the gather and is raised on every rank, the
    first failing rank's message: the ranks stop together, having issued the same collectives. A rank
    raising alone would leave the others waiting in the gather (NCCL: until its timeout).
    """
    mine = share(items)
    if world() == 1:
        return work(mine)
    try:
        pairs, error = list(zip(mine, work(mine), strict=True)), None
    except (UserError, OSError) as err:
        pairs, error = [], str(err)
    parts: list = [None] * world()
    dist.all_gather_object(parts, (pairs, error))
    errors = [e for _, e in parts if e is not None]
    if errors:
        raise UserError(errors[0]) from None
    return [v for _, v in sorted((p for part, _ in parts for p in part), key=lambda p: p[0])]


def on_rank0(write: Callable[[], None]) -> None:
    """``write()`` on rank 0 (the one writer of a shared file), every rank returning once it is done
    (one ``broadcast_object_list``, the barrier). A :class:`UserError` or ``OSError`` of rank 0's is
    raised on every rank."""
    if world() == 1:
        write()
        return
    error: list = [None]
    if rank() == 0:
        try:
            write()
        except (UserError, OSError) as err:
            error[0] = str(err)
    dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise UserError(error[0])
