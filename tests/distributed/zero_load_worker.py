"""Worker for the sliced-loading tests: build a task's model under ``zero.Init`` (ZeRO-3, fp32, gloo),
counting every tensor element read from safetensors files on this rank, then gather the weights.

    torchrun --nproc_per_node N zero_load_worker.py OVERRIDE...   (training-config overrides)

Cases: ``-- NAME OVERRIDE...`` each; writes ``$MEGAVG_TEST_OUT/<NAME>_rank<R>.pt``: ``{"read": elements
read, "state": gathered weights (rank 0)}``. The case named ``resume`` trains instead (:func:`resume_case`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from megavg.models import registry


class CountingOpen:
    """``safe_open`` that adds the elements of every tensor (or slice) it returns to ``CountingOpen.read``."""

    read = 0

    def __init__(self, path, framework="pt"):
        self.fh = _SAFE_OPEN(path, framework=framework)

    def __enter__(self):
        self.fh.__enter__()
        return self

    def __exit__(self, *exc):
        return self.fh.__exit__(*exc)

    def keys(self):
        return self.fh.keys()

    def get_tensor(self, key):
        tensor = self.fh.get_tensor(key)
        CountingOpen.read += tensor.numel()
        return tensor

    def get_slice(self, key):
        return _CountingSlice(self.fh.get_slice(key))


class _CountingSlice:
    def __init__(self, piece):
        self.piece = piece

    def get_shape(self):
        return self.piece.get_shape()

    def get_dtype(self):
        return self.piece.get_dtype()

    def __getitem__(self, index):
        tensor = self.piece[index]
        CountingOpen.read += tensor.numel()
        return tensor


_SAFE_OPEN = registry.safe_open


def gathered_state(model) -> dict[str, torch.Tensor]:
    import deepspeed

    state = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            state[name] = param.data.detach().clone()
    return state


def build_case(overrides: list[str]) -> tuple[int, list[str], dict[str, torch.Tensor]]:
    """Elements read on this rank while building the task's model, the names of its parameters left
    unpartitioned, and its gathered weights."""
    from megavg.tasks import build_task
    from megavg.train import engine
    from megavg.train.config import load_config

    cfg = load_config(None, ["parallel.deepspeed=configs/deepspeed/zero3_fp32.json", *overrides])
    cfg.parallel.zero_init = True
    task = build_task(cfg)
    ds_config = engine.deepspeed_config(cfg)
    task.init_context = lambda: engine.zero_init(cfg, ds_config)
    CountingOpen.read = 0
    registry.safe_open = CountingOpen
    torch.manual_seed(cfg.schedule.seed)
    try:
        model = task.build_model()
    finally:
        registry.safe_open = _SAFE_OPEN
    whole = [name for name, param in model.named_parameters() if not hasattr(param, "ds_id")]
    return CountingOpen.read, whole, gathered_state(model)


def resume_case(overrides: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Train 2 steps (checkpoint without frozen weights), then resume in a new trainer: the weights at
    the end of the first run and right after the resume."""
    from megavg.tasks import build_task
    from megavg.train import loop
    from megavg.train.config import load_config
    from megavg.train.signals import StopFlag
    from tests.distributed.engine_worker import install_hooks

    os.environ["MEGAVG_TEST_SYNTHETIC"] = "1"
    install_hooks()
    cfg = load_config("configs/train/wan_flow_tiny.yaml", ["parallel.zero_init=true", *overrides])
    first = loop.Trainer(cfg, build_task(cfg))
    assert first.run(StopFlag()) == 0
    trained = gathered_state(first.engine.module)
    first.close()
    cfg.schedule.steps += 1
    second = loop.Trainer(cfg, build_task(cfg))
    assert second.step == cfg.schedule.steps - 1, second.step
    resumed = gathered_state(second.engine.module)
    second.close()
    return {"trained": trained, "resumed": resumed}


def main() -> None:
    """Cases on the command line as ``-- NAME OVERRIDE... -- NAME OVERRIDE...``."""
    from megavg.parallel import state as state_groups
    from megavg.train import engine

    engine.init_distributed("gloo")
    state_groups.initialize(1)
    out = Path(os.environ["MEGAVG_TEST_OUT"])
    rank = dist.get_rank()
    text = " ".join(sys.argv[1:])
    for case in [c.split() for c in text.split("--") if c.strip()]:
        if case[0] == "resume":
            result = resume_case(case[1:])
        else:
            read, whole, state = build_case(case[1:])
            result = {"read": read, "whole": whole, "state": state}
        torch.save(result if rank == 0 else {"read": result.get("read")}, out / f"{case[0]}_rank{rank}.pt")
    dist.barrier()
    state_groups.shutdown()


if __name__ == "__main__":
    main()
