"""The device-strict collective check itself, and the small collectives of the training loop under it."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from megavg.models.dcaev.parallelize import gather_time
from megavg.parallel.device_check import StrayTensorError, strict_collectives
from megavg.train import loop
from megavg.train.signals import StopFlag


@pytest.fixture
def world_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_tensor_made_without_device_is_caught_and_named(world_of_one):
    original = dist.all_reduce
    with strict_collectives("cpu"):
        dist.all_reduce(torch.zeros(2, device="cpu"))  # on the compute device: fine
        with pytest.raises(StrayTensorError, match=r"all_reduce: argument 0 is on meta, not on .* cpu"):
            dist.all_reduce(torch.zeros(2))
        with pytest.raises(StrayTensorError, match=r"all_gather: argument 0\[1\] is on meta"):
            dist.all_gather([torch.zeros(1, device="cpu"), torch.zeros(1)], torch.zeros(1, device="cpu"))
    assert dist.all_reduce is original and torch.zeros(1).device.type == "cpu"  # all restored


def test_stop_flag_and_loop_reductions_stay_on_the_compute_device(world_of_one):
    cpu = torch.device("cpu")
    with strict_collectives(cpu):
        assert StopFlag().agreed() is False
        assert loop._all_finite(torch.tensor(True, device=cpu))
        terms = {"loss": torch.tensor(2.0, device=cpu), "tokens": torch.tensor(4.0, device=cpu)}
        assert loop._mean_over_ranks(terms, cpu) == {"loss": 2.0, "tokens": 4.0}


def test_dcaev_time_gather_stays_on_the_compute_device(world_of_one):
    local = torch.randn(1, 2, 3, 2, 2)
    with strict_collectives("cpu"):
        assert torch.equal(gather_time(local, dist.group.WORLD), local)
