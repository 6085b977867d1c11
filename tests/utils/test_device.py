"""Rank -> CUDA device on fake device tables of 8 GPUs: all visible to every task, or one bound per task."""

from __future__ import annotations

import pytest
import torch

import megavg.infer.precompute as precompute
from megavg.utils import device
from megavg.utils.device import CudaTable, local_cuda_index, resolve_device
from megavg.utils.errors import UserError

NODE = CudaTable(physical=8)


def slurm_task(local_id: int, visible: str | None, tasks: int = 8) -> dict[str, str]:
    """The environment srun gives task ``local_id`` of 8 (launchers/rank.sh adds LOCAL_RANK)."""
    env = {"SLURM_LOCALID": str(local_id), "LOCAL_RANK": str(local_id), "LOCAL_WORLD_SIZE": str(tasks)}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return env


@pytest.mark.parametrize("rank", range(8))
def test_all_gpus_visible_rank_r_uses_gpu_r(rank):
    assert NODE.visible(slurm_task(rank, None)) == 8
    assert local_cuda_index(slurm_task(rank, None), NODE) == rank
    assert local_cuda_index(slurm_task(rank, "0,1,2,3,4,5,6,7"), NODE) == rank


@pytest.mark.parametrize("rank", range(8))
def test_one_gpu_bound_per_task_is_device_0(rank):
    # --gpus-per-task=1 / --gpu-bind: SLURM lists the task's own GPU only (its physical index)
    env = slurm_task(rank, str(rank))
    assert NODE.visible(env) == 1
    assert local_cuda_index(env, NODE) == 0
    assert resolve_device("cuda", env, NODE) == torch.device("cuda", 0)


def test_two_gpus_per_task_use_the_first_of_their_own():
    env = slurm_task(3, "6,7", tasks=4)
    assert local_cuda_index(env, NODE) == 0


def test_srun_without_local_rank_reads_slurm_localid():
    env = {"SLURM_LOCALID": "5", "SLURM_NTASKS_PER_NODE": "8"}
    assert local_cuda_index(env, NODE) == 5


def test_more_ranks_than_visible_gpus_is_one_error_line():
    with pytest.raises(UserError, match="local rank 5 but only 4 CUDA devices visible"):
        local_cuda_index({"LOCAL_RANK": "5", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, NODE)
    with pytest.raises(UserError, match="no CUDA device visible"):
        resolve_device("cuda", {"LOCAL_RANK": "0"}, CudaTable(physical=0))


def test_explicit_index_and_auto():
    env = slurm_task(3, None)
    assert resolve_device("cuda:6", env, NODE) == torch.device("cuda", 6)
    assert resolve_device("auto", env, NODE) == torch.device("cuda", 3)
    assert resolve_device("auto", env, CudaTable(physical=0)) == torch.device("cpu")
    assert resolve_device("cpu", env, NODE) == torch.device("cpu")


@pytest.mark.parametrize(("visible", "expected"), [(None, "cuda:3"), ("3", "cuda:0")])
def test_precompute_puts_each_rank_on_its_own_gpu(monkeypatch, visible, expected):
    """``--device cuda`` under a launcher: rank 3 loads its encoders on its GPU, not on cuda:0."""
    monkeypatch.setattr(device, "TABLE", NODE)
    for key, value in slurm_task(3, visible).items():
        monkeypatch.setenv(key, value)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    loaded = []

    def fake_load(folder, device="cpu", dtype=None):
        loaded.append(str(device))
        raise RuntimeError("stop after the device choice")

    monkeypatch.setattr(precompute.megavg.models, "load", fake_load)
    args = precompute.parse_args(["--vae", "v", "--shards", "s", "--text-encoder", "t", "--frames", "8",
                                  "--size", "32", "32", "--out", "o", "--device", "cuda"])  # fmt: skip
    with pytest.raises(RuntimeError, match="stop after"):
        precompute.load_encoders(args)
    assert loaded == [expected]


@pytest.mark.parametrize(("visible", "expected"), [(None, 6), ("6", 0)])
def test_trainer_binds_its_rank_device(monkeypatch, visible, expected):
    """What the trainer's init_distributed calls: set_device on this rank's GPU, not SLURM_LOCALID blindly."""
    monkeypatch.setattr(device, "TABLE", NODE)
    bound = []
    monkeypatch.setattr(torch.cuda, "set_device", bound.append)
    assert device.bind_local_device(slurm_task(6, visible)) == torch.device("cuda", expected)
    assert bound == [torch.device("cuda", expected)]
