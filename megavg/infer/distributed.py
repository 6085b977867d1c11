"""Multi-process generation: one video on N processes (``torchrun``), N = SP size x (2 if CFG-parallel).

    torchrun --nproc-per-node 4 -m megavg.infer.generate PIPE --prompt ... --out v.mp4 --sp 2 --cfg-parallel

Layout (the trainer's :mod:`megavg.parallel.state` groups)::

    N = 4, sp = 2, cfg-parallel:  SP groups [0 1] [2 3] (Ulysses inside each: same apply_ulysses as training)
                                  CFG pairs [0 2] [1 3] (ranks 0-1 run the conditional branch, 2-3 the
                                  unconditional one; each pair all-gathers its two velocities)

Every rank holds the same noise and text, runs the same solver and ends with the same latents. DC-AE-V
decoding is then split by latent chunks over all N ranks: each decodes a contiguous range, starting
:func:`megavg.infer.decode.context_chunks` chunks early for the left context the chunk-causal convs
need, and sends its pieces to rank 0, which writes them in order into the one MP4.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megavg.infer.decode import context_chunks, decode_chunk_range
from megavg.utils.errors import UserError


@dataclass
class Layout:
    """This process's place in a generation run (world 1: single process, no groups)."""

    world: int = 1
    rank: int = 0
    sp: int = 1
    sp_group: object = None
    cfg_group: object = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world() -> int:
    """The number of processes a launcher (torchrun) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(sp: int, cfg_parallel: bool, device: str) -> Layout:
    """Check the process count against ``sp`` and ``cfg_parallel`` and, when it is more than one, join the
    process group (NCCL on CUDA, gloo on the CPU) and build the SP groups and CFG pairs."""
    world = launched_world()
    need = sp * (2 if cfg_parallel else 1)
    if sp < 1:
        raise UserError(f"--sp {sp}: must be at least 1")
    if world != need:
        how = f"--sp {sp}" + (" --cfg-parallel" if cfg_parallel else "")
        raise UserError(
            f"{how} needs {need} processes, this run has {world}: launch with "
            f"torchrun --nproc-per-node {need} -m megavg.infer.generate ..."
        )
    target = torch.device(device)
    if world == 1:
        return Layout(device=target)
    from megavg.parallel import state  # only under a launcher: the single-process runner stays standalone

    if target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(target)
    dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    state.initialize(sp)
    rank, cfg_group = dist.get_rank(), None
    if cfg_parallel:
        for first in range(sp):  # new_group is collective: every rank creates every pair
            group = dist.new_group([first, first + sp])
            if rank % sp == first:
                cfg_group = group
    sp_group = state.get_sequence_parallel_group() if sp > 1 else None
    return Layout(world, rank, sp, sp_group, cfg_group, target)


def teardown(layout: Layout) -> None:
    if layout.world > 1:
        from megavg.parallel import state

        state.shutdown()


def chunk_ranges(chunks: int, world: int) -> list[tuple[int, int]]:
    """Contiguous, as equal as possible ranges of ``chunks`` for ``world`` ranks (earlier ranks get more)."""
    base, extra = divmod(chunks, world)
    bounds = [0]
    for r in range(world):
        bounds.append(bounds[-1] + base + (r < extra))
    return list(zip(bounds[:-1], bounds[1:]))


@torch.no_grad()
def split_decode(vae, latents: torch.Tensor, tile: int, layout: Layout, write) -> None:
    """Decode ``latents`` (unscaled, on every rank) over all ranks; rank 0 calls ``write(piece)`` for
    every decoded piece [B, 3, n, H, W] in time order. Collective."""
    chunks = -(-latents.shape[2] // vae.latent_chunk)
    start, stop = chunk_ranges(chunks, layout.world)[layout.rank]
    context = context_chunks(vae)
    mine = decode_chunk_range(vae, latents, start, stop, context, tile)
    if not layout.is_main:
        pieces = list(mine)
        _send_int(len(pieces), layout.device)
        for piece in pieces:
            _send_int(piece.shape, layout.device)
            dist.send(piece.contiguous(), dst=0)
        return
    for piece in mine:
        write(piece)
    for src in range(1, layout.world):
        for _ in range(int(_recv_int(1, src, layout.device)[0])):
            shape = _recv_int(5, src, layout.device).tolist()
            piece = torch.empty(shape, dtype=latents.dtype, device=layout.device)
            dist.recv(piece, src=src)
            write(piece)


def _send_int(values, device: torch.device) -> None:
    values = [values] if isinstance(values, int) else list(values)
    dist.send(torch.tensor(values, dtype=torch.int64, device=device), dst=0)


def _recv_int(count: int, src: int, device: torch.device) -> torch.Tensor:
    out = torch.empty(count, dtype=torch.int64, device=device)
    dist.recv(out, src=src)
    return out
