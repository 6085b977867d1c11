"""A real ``deepspeed`` launch (2 processes, ZeRO-3, gloo) of the tiny Wan DiT over a two-bucket latent
set: every step's batch holds one bucket, the same on both data-parallel ranks (from each rank's log of
batch shapes), in the seeded global order; a run stopped after step 2 and resumed continues that order
(same shapes and samples as the straight run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import megavg.models
from megavg.data import write_latent_shards
from megavg.data.buckets import BucketOrder
from tests.distributed.test_engine_resume import launch

WORKER = "tests/distributed/engine_worker.py"
GRIDS = {"2x4x4": 12, "1x4x8": 4}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    args = megavg.models.build("wan-tiny-t2v").args
    gen = torch.Generator().manual_seed(0)
    samples = []
    for grid, n in GRIDS.items():
        t, h, w = map(int, grid.split("x"))
        samples += [{"latents": torch.randn(args.in_channels, t, h, w, generator=gen),
                     "text": torch.randn(5, args.text_dim, generator=gen)} for _ in range(n)]  # fmt: skip
    out = tmp_path_factory.mktemp("buckets") / "lat"
    write_latent_shards(samples[::2] + samples[1::2], out, samples_per_shard=2)
    return out


def shape_log(out: Path, rank: int) -> dict[int, dict]:
    lines = (out / f"shapes_rank{rank}.jsonl").read_text().splitlines()
    return {rec["step"]: rec for rec in map(json.loads, lines)}


def train(tmp_path: Path, name: str, shards: Path, steps: int) -> Path:
    args = ["--config", "configs/train/wan_flow_tiny.yaml", f"data.shards={shards}", "data.batch_size=2",
            f"schedule.steps={steps}", "checkpoint.every=2", "logging.tensorboard=false",
            "schedule.seed=2", f"run.dir={tmp_path / 'run' / name.split('-')[0]}"]  # fmt: skip
    out = tmp_path / name
    proc = launch([WORKER], args, out, MEGAVG_TEST_LOG_SHAPES="1")
    assert proc.wait(timeout=400) == 0, out.with_suffix(".log").read_text()
    return out


@pytest.mark.slow
@pytest.mark.distributed
def test_single_bucket_lockstep_batches_and_resume(tmp_path, shards):
    straight = train(tmp_path, "a", shards, 6)
    logs = [shape_log(straight, rank) for rank in range(2)]
    order = BucketOrder(GRIDS, "seed2")
    assert sorted(logs[0]) == sorted(logs[1]) == list(range(6))
    for step in range(6):
        a, b = logs[0][step], logs[1][step]
        assert a["shape"][2:] == b["shape"][2:] == [int(n) for n in order.bucket(step).split("x")]
        assert a["shape"][0] == b["shape"][0] == 2 and not set(a["key"]) & set(b["key"])
    assert {order.bucket(step) for step in range(6)} == set(GRIDS)  # both buckets were trained on

    train(tmp_path, "b-first", shards, 2)
    resumed = train(tmp_path, "b-resumed", shards, 6)
    for rank in range(2):
        assert shape_log(resumed, rank) == {s: rec for s, rec in logs[rank].items() if s >= 2}
