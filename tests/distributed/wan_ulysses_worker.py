"""Worker for test_ulysses_wan.py: tiny Wan DiT forward/backward under Ulysses SP over all ranks (gloo).

Writes, per case and rank, the gathered output and this rank's parameter gradients to $MEGAVG_TEST_OUT.
``make_case`` / ``loss_of`` are shared with the test, which computes the single-process reference.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from megavg.models import build
from megavg.models.wan.parallelize import apply_ulysses
from megavg.parallel import state
from megavg.utils.errors import UserError
from tests.models.wan_inputs import inputs

# name -> (preset, token grid (t, h, w), activation checkpointing, per-rank token multiple)
CASES = {
    "t2v": ("wan-tiny-t2v", (2, 2, 3), False, 1),  # 12 tokens: even split
    "t2v_uneven": ("wan-tiny-t2v", (1, 3, 3), False, 1),  # 9 tokens: padded to 10
    "i2v_uneven_ckpt": ("wan-tiny-i2v", (1, 3, 5), True, 1),  # 15 tokens, checkpointed blocks
    "t2v_fp8_padding": ("wan-tiny-t2v", (1, 3, 3), False, 16),  # 9 tokens padded to 32 as FP8 runs do
}


def make_case(name: str):
    """(model, inputs) of a case, identical on every process (fixed seeds)."""
    preset, grid, ckpt, _ = CASES[name]
    torch.manual_seed(0)
    model = build(preset, grad_checkpointing=ckpt)
    return model, inputs(model.args, grid=grid)


def loss_of(out: torch.Tensor) -> torch.Tensor:
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    return (out * weight).sum()


def run_case(name: str, group, out_dir: Path, rank: int) -> None:
    model, x = make_case(name)
    apply_ulysses(model, group)
    model.token_shard.multiple = CASES[name][3]
    out = model(*x)
    loss_of(out).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    torch.save({"out": out.detach(), "grads": grads}, out_dir / f"{name}_rank{rank}.pt")


def main() -> None:
    dist.init_process_group("gloo")
    rank, group = dist.get_rank(), dist.group.WORLD
    out_dir = Path(os.environ["MEGAVG_TEST_OUT"])
    for name in CASES:
        run_case(name, group, out_dir, rank)
    try:
        apply_ulysses(build("wan-tiny-t2v", num_heads=1), group)
        heads_error = ""
    except UserError as err:
        heads_error = str(err)
    torch.save({"heads_error": heads_error}, out_dir / f"misc_rank{rank}.pt")
    state.shutdown()


if __name__ == "__main__":
    main()
