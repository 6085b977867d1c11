"""Point-to-point halo exchange along time for chunk-causal convs under sequence parallelism (SP).

The ranks of an SP group hold consecutive pieces of one clip (rank 0 the earliest). A chunk-causal conv
needs, as the left pad of its first chunk, the last ``p`` frames of the previous piece's input to that
same layer: each rank sends its last ``p`` input frames (its *tail*) to the next rank and receives the
previous rank's tail; rank 0 receives zeros, exactly the left pad of the clip's first chunk.

The exchange is autograd-aware: the gradient with respect to the received frames is sent back to the
rank that owns them and lands on its tail. Each rank's parameter gradients then cover the computation
it ran, and summed over the SP group they equal the single-process gradients of the sum of the ranks'
local losses ("SP-sum", the convention the training engine relies on).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _neighbours(group) -> tuple[int | None, int | None]:
    """Global ranks of the previous and next member of ``group`` (None at the ends)."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    prev = dist.get_global_rank(group, rank - 1) if rank > 0 else None
    nxt = dist.get_global_rank(group, rank + 1) if rank < size - 1 else None
    return prev, nxt


def _shift(send: torch.Tensor, to: int | None, source: int | None, group) -> torch.Tensor | None:
    """Send ``send`` to rank ``to`` and receive a same-shaped tensor from ``source`` (both optional)."""
    received = torch.empty_like(send) if source is not None else None
    requests = []
    if to is not None:
        requests.append(dist.isend(send.contiguous(), to, group=group))
    if source is not None:
        requests.append(dist.irecv(received, source, group=group))
    for request in requests:
        request.wait()
    return received


class _HaloExchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tail: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        prev, nxt = _neighbours(group)
        received = _shift(tail, nxt, prev, group)  # tails move forwards in time
        return received if received is not None else torch.zeros_like(tail)

    @staticmethod
    def backward(ctx, grad_left: torch.Tensor):
        prev, nxt = _neighbours(ctx.group)
        grad_tail = _shift(grad_left, prev, nxt, ctx.group)  # gradients move backwards in time
        return (grad_tail if grad_tail is not None else torch.zeros_like(grad_left)), None


def exchange_left_halo(tail: torch.Tensor, group) -> torch.Tensor:
    """Send this rank's ``tail`` (B,C,p,H,W) to the next rank; return the previous rank's tail (zeros on
    the first rank). Every rank of ``group`` must call it with same-shaped tails."""
    return _HaloExchange.apply(tail, group)


class HaloLeftContext:
    """Left context of a chunk-causal conv under SP: the previous rank's tail, by halo exchange."""

    def __init__(self, group):
        self.group = group

    def __call__(self, tail: torch.Tensor) -> torch.Tensor:
        return exchange_left_halo(tail, self.group)
