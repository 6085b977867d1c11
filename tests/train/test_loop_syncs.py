"""The trainer's step talks to the other ranks once (the finiteness check), not once per micro-batch, and
keeps the loss on the device until it is logged; a NaN stops before the update (one process, fake engine)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from megavg.train import loop
from megavg.train.config import load_config


class CountingEngine:
    """Records the order of DeepSpeed calls; ``step`` at the last micro-batch is the update."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def backward(self, loss: torch.Tensor) -> None:
        self.calls.append("backward")

    def step(self) -> None:
        self.calls.append("step")


class ConstantTask:
    def __init__(self, losses: list[float]) -> None:
        self.losses = iter(losses)

    def loss(self, engine, batch, ctx) -> dict[str, torch.Tensor]:
        value = torch.tensor(next(self.losses), requires_grad=True)
        return {"loss": value * 1.0, "l1": value.detach() * 2}

    def tokens(self, batch) -> int:
        return 10


def trainer(tmp_path, losses: list[float]) -> loop.Trainer:
    t = loop.Trainer.__new__(loop.Trainer)  # the step's state only: no model, no DeepSpeed
    t.cfg = load_config(None, ["schedule.grad_accum=3"])
    t.task, t.engine = ConstantTask(losses), CountingEngine()
    t.batches, t.step, t.dp_rank = iter([{}] * 3), 0, 0
    t.device, t.dtype, t.sp_group = torch.device("cpu"), torch.float32, None
    t.flops = lambda batch: None  # no FLOP trace (no model)
    return t


@pytest.fixture
def collectives(tmp_path, monkeypatch):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    seen: list[str] = []
    reduce, item = dist.all_reduce, torch.Tensor.item
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: (seen.append("all_reduce"), reduce(*a, **k))[1])
    monkeypatch.setattr(torch.Tensor, "item", lambda self: (seen.append("item"), item(self))[1])
    yield seen
    dist.destroy_process_group()


def test_one_sync_per_step_and_device_tensors_until_logging(tmp_path, collectives):
    t = trainer(tmp_path, [1.0, 2.0, 6.0])
    terms = t.train_step()
    # the finiteness check, once for 3 micro-batches: one host sync (one rank: agree() needs no all-reduce)
    assert collectives == ["item"]
    assert all(isinstance(v, torch.Tensor) for v in terms.values())
    assert t.engine.calls == ["backward", "step"] * 3
    collectives.clear()
    mean = loop._mean_over_ranks(terms, t.device)  # at logging time: one reduction for every term
    assert collectives == ["all_reduce"]
    assert mean == pytest.approx({"loss": 3.0, "l1": 6.0, "tokens": 30.0})


def test_nan_in_an_early_micro_batch_stops_before_the_update(tmp_path, collectives):
    t = trainer(tmp_path, [1.0, float("nan"), 2.0])
    with pytest.raises(SystemExit) as info:
        t.train_step()
    assert info.value.code == 1
    assert t.engine.calls == ["backward", "step", "backward", "step", "backward"]  # no final step
