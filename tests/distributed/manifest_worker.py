"""Worker for test_manifest.py: 2 ranks write their checkpoint files, rank 0's directory listing is stale
(as an NFS client's cached listing right after another node wrote: rank 1's files are not in it), then
the tag is sealed."""

from __future__ import annotations

import os
from pathlib import Path

import torch.distributed as dist

from megavg.parallel import state
from megavg.train import ckpt_integrity

FILES = {0: ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "rng/rank_00000.pt", "config.yaml"],
         1: ["zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng/rank_00001.pt"]}  # fmt: skip


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tag = Path(os.environ["MEGAVG_TEST_OUT"]) / "step_00000003"
    for i, name in enumerate(FILES[rank]):
        (tag / name).parent.mkdir(parents=True, exist_ok=True)
        (tag / name).write_bytes(bytes([rank, i]) * (100 + 37 * i))
    dist.barrier()
    if rank == 0:
        listing = ckpt_integrity.tag_files
        ckpt_integrity.tag_files = lambda d: [n for n in listing(d) if n not in FILES[1]]  # stale NFS view
    ckpt_integrity.seal(tag)
    dist.barrier()
    state.shutdown()


if __name__ == "__main__":
    main()
