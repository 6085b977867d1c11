"""The ranks of a ``torchrun`` evaluation: each takes a share of the videos, results are gathered.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) there is one rank and nothing is
initialised. Under it, a gloo process group joins the ranks (CPU objects are gathered, so gloo serves on
GPU machines too; models run on ``cuda:LOCAL_RANK`` when CUDA is available).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist


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


def gather(indices: list[int], values: list) -> list:
    """Every rank's ``values`` (for its ``indices`` from :func:`share`) in index order, on every rank."""
    if world() == 1:
        return [v for _, v in sorted(zip(indices, values, strict=True), key=lambda p: p[0])]
    parts: list = [None] * world()
    dist.all_gather_object(parts, list(zip(indices, values, strict=True)))
    pairs = sorted((p for part in parts for p in part), key=lambda p: p[0])
    return [v for _, v in pairs]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
