"""Worker for test_dcaev_sp.py: temporal SP of the tiny DC-AE-V on every process of a gloo group.

Runs under the device-strict collective check (:mod:`megavg.parallel.device_check`). Writes, per case,
the gathered encode/decode outputs and this rank's parameter gradients for two losses:
the sum of per-rank local losses (also with activation checkpointing), and the same loss computed on
every rank after ``gather_time``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

import megavg.models as mm
from megavg.models.dcaev.parallelize import (
    apply_activation_checkpointing,
    apply_temporal_sp,
    gather_time,
    shard_time,
)
from megavg.parallel import state
from megavg.parallel.device_check import strict_collectives

CASES = {"frames40": (40, 10), "frames37": (37, 9)}  # (frames, latent frames): 5 chunks each, 37/9 partial


def make_case(name: str):
    """Same model and data on every process: tiny preset, random norm affine, fixed inputs."""
    frames, latents = CASES[name]
    torch.manual_seed(0)
    model = mm.build("dc-ae-v-tiny")
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "norm" in key:
                p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, frames, 16, 16, generator=g) * 2 - 1
    weight = torch.randn(1, 3, frames, 16, 16, generator=g)
    z = torch.randn(1, 4, latents, 4, 4, generator=g)
    return model, x, weight, z


def grads_of(model) -> dict[str, torch.Tensor]:
    out = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def run_case(name: str, group, out_dir: Path, prefix: str) -> None:
    model, x, weight, z = make_case(name)
    with strict_collectives("cpu"):  # a tensor made without device= would reach NCCL off the GPU
        sp_passes(model, x, weight, z, group, out_dir / f"{prefix}{name}_rank{dist.get_rank(group)}.pt")


def sp_passes(model, x, weight, z, group, path: Path) -> None:
    apply_temporal_sp(model, group)
    x_local = shard_time(x, model.frame_chunk, group)
    w_local = shard_time(weight, model.frame_chunk, group)
    with torch.no_grad():
        encoded = gather_time(model.encode(x_local), group)
        decoded = gather_time(model.decode(shard_time(z, model.latent_chunk, group)), group)
    (model(x_local) * w_local).sum().backward()  # this rank's share of the sum of local losses
    local_grads = grads_of(model)
    (gather_time(model(x_local), group) * weight).sum().backward()  # same full loss on every rank
    gathered_grads = grads_of(model)
    apply_activation_checkpointing(model)  # recomputation repeats the halo exchanges in backward
    (model(x_local) * w_local).sum().backward()
    result = dict(encoded=encoded, decoded=decoded, local_grads=local_grads, gathered_grads=gathered_grads,
                  checkpointed_grads=grads_of(model), frames=x_local.shape[2])  # fmt: skip
    torch.save(result, path)


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    out_dir = Path(os.environ["MEGAVG_TEST_OUT"])
    for world in (2, 3):  # one launch of 3 processes: SP=2 on ranks 0-1, then SP=3 on all
        group = dist.new_group(list(range(world)))  # collective: every process creates every group
        if dist.get_rank() < world:
            for name in CASES:
                run_case(name, group, out_dir, prefix=f"sp{world}_")
    dist.barrier()
    state.shutdown()


if __name__ == "__main__":
    main()
