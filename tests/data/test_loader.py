"""The per-rank loader: DP splitting, identical SP batches, exact resume, corrupt data, buckets, latents."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tarfile

import pytest
import torch

from megavg.data import DataConfig, build_loader, write_latent_shards
from megavg.utils.errors import UserError
from tests.data.conftest import video_sample, write_video_set


def cfg_for(shards, **changes):
    base = dict(shards=shards, frames=4, frame_stride=2, size=(16, 16), batch_size=2, shuffle_buffer=4)
    return DataConfig(**{**base, **changes})


def take(loader, n):
    return list(itertools.islice(loader, n))


def shard_keys(paths):
    keys = set()
    for path in paths:
        with tarfile.open(path) as tar:
            keys |= {name.split(".")[0] for name in tar.getnames()}
    return keys


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["key"] == y["key"] and x["caption"] == y["caption"]
        torch.testing.assert_close(x["video"], y["video"], rtol=0, atol=0)


def test_video_batch_layout(video_shards):
    cfg = cfg_for(video_shards, frames=6, chunk=3, size=(24, 32))
    batch = next(iter(build_loader(cfg, dp_rank=0, dp_size=1, seed=0)))
    assert batch["video"].shape == (2, 3, 6, 24, 32) and batch["video"].dtype == torch.float32
    assert -1 <= batch["video"].min() < batch["video"].max() <= 1
    assert len(batch["caption"]) == len(batch["key"]) == 2 and batch["caption"][0].startswith("carphone")
    with pytest.raises(UserError, match="data.frames: 6 is not a multiple of data.chunk=4"):
        cfg_for(video_shards, frames=6, chunk=4)


def test_dp_ranks_get_disjoint_shards_and_sp_ranks_identical_batches(video_shards):
    cfg = cfg_for(video_shards)
    rank0, rank1 = (build_loader(cfg, dp_rank=r, dp_size=2, seed=7) for r in (0, 1))
    assert not set(rank0.shards) & set(rank1.shards) and len(rank0.shards) == len(rank1.shards) == 4
    batches0 = take(rank0, 5)
    assert {k for b in batches0 for k in b["key"]} <= shard_keys(rank0.shards)
    assert {k for b in take(rank1, 5) for k in b["key"]} <= shard_keys(rank1.shards)
    # two SP ranks of DP group 0: separately built loaders, same dp_rank -> the same batches
    assert_same_batches(batches0, take(build_loader(cfg, dp_rank=0, dp_size=2, seed=7), 5))
    other_seed = take(build_loader(cfg, dp_rank=0, dp_size=2, seed=8), 5)
    assert [b["key"] for b in other_seed] != [b["key"] for b in batches0]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_step_k_gives_the_uninterrupted_batches(video_shards, workers):
    cfg = cfg_for(video_shards, num_workers=workers)
    full = take(build_loader(cfg, dp_rank=1, dp_size=2, seed=3), 7)
    resumed = take(build_loader(cfg, dp_rank=1, dp_size=2, seed=3, start_step=4), 3)
    assert_same_batches(full[4:], resumed)
    assert len({tuple(b["key"]) for b in full}) > 1  # the stream is not one repeated batch


def test_stream_is_endless_and_reshuffled_each_epoch(video_shards):
    cfg = cfg_for(video_shards, batch_size=1)
    keys = [b["key"][0] for b in take(build_loader(cfg, 0, 2, seed=0), 12)]  # 3 epochs of 4 samples
    epochs = [keys[i : i + 4] for i in range(0, 12, 4)]
    assert all(len(set(e)) >= 3 for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1


def test_corrupt_sample_is_skipped_counted_and_warned_once(tmp_path, warnings_log):
    good = [video_sample(f"g{i}", "carphone_distorted") for i in range(3)]
    broken = video_sample("bad", "carphone_pristine", data=b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 3000)
    shards = write_video_set(tmp_path / "shards", [*good, broken], per_shard=4)
    loader = build_loader(cfg_for(shards, batch_size=1), dp_rank=0, dp_size=1, seed=0)
    batches = take(loader, 12)  # 4 epochs over the one shard
    assert all(b["key"][0] != "bad" for b in batches) and len(batches) == 12
    assert loader.skipped == loader.stats.skipped >= 3  # revisited every epoch, counted every time
    assert len(warnings_log) == 1
    assert "bad" in warnings_log[0] and "shard-000000.tar" in warnings_log[0]


def test_truncated_shard_is_skipped_and_counted(tmp_path, warnings_log):
    samples = [video_sample(f"s{i}", "carphone_distorted") for i in range(4)]
    shards = tmp_path / "shards"
    write_video_set(shards, samples, per_shard=2)
    first = shards / "shard-000000.tar"
    first.write_bytes(first.read_bytes()[:9000])  # cut inside the second sample
    loader = build_loader(cfg_for(str(shards), batch_size=1), dp_rank=0, dp_size=1, seed=0)
    keys = [b["key"][0] for b in take(loader, 8)]
    assert set(keys) <= {"s0", "s2", "s3"} and {"s2", "s3"} <= set(keys)
    assert loader.stats.shard_errors + loader.stats.skipped >= 1
    shard_warnings = [m for m in warnings_log if m.startswith("skipping unreadable data in shard")]
    assert len(shard_warnings) == 1 and str(first) in shard_warnings[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_all_samples_corrupt_is_an_error_not_a_hang(tmp_path, workers):
    broken = [video_sample(f"b{i}", "carphone_pristine", data=b"junk" * 100) for i in range(2)]
    shards = write_video_set(tmp_path / "shards", broken)
    with pytest.raises(UserError, match="^no sample decodes") as err:
        take(build_loader(cfg_for(shards, batch_size=1, num_workers=workers), 0, 1, seed=0), 1)
    assert "\n" not in str(err.value)


def test_batches_take_the_bucket_of_most_clips(tmp_path):
    samples = [video_sample("wide", "bikes"), video_sample("box1", "carphone_pristine")]
    shards = write_video_set(tmp_path / "shards", samples)
    cfg = cfg_for(shards, batch_size=1, buckets=[(16, 16), (16, 32)], shuffle_buffer=1)
    shapes = {b["key"][0]: tuple(b["video"].shape[-2:]) for b in take(build_loader(cfg, 0, 1, seed=0), 4)}
    assert shapes == {"wide": (16, 32), "box1": (16, 16)}  # bikes is 640x272, carphone 176x144


def test_config_errors(video_shards, tmp_path):
    with pytest.raises(UserError, match="8 shard\\(s\\) cannot feed 16 data-parallel ranks"):
        build_loader(cfg_for(video_shards), dp_rank=0, dp_size=16, seed=0)
    with pytest.raises(UserError, match="holds video shards but config data.kind is latent"):
        build_loader(cfg_for(video_shards, kind="latent"), dp_rank=0, dp_size=1, seed=0)
    with pytest.raises(UserError, match="no .tar shard found"):
        build_loader(cfg_for(str(tmp_path / "none-*.tar")), dp_rank=0, dp_size=1, seed=0)
    with pytest.raises(UserError, match="does not exist"):
        build_loader(cfg_for(video_shards + "/shard-{000000..000009}.tar"), dp_rank=0, dp_size=1, seed=0)


def test_latent_shards_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(0)
    written = {}
    for i, length in enumerate([3, 5, 4, 5]):
        sample = {
            "key": f"lat{i}",
            "caption": f"caption {i}",
            "latents": torch.randn(4, 2, 3, 3, generator=gen),
        }
        sample["text"] = torch.randn(length, 6, generator=gen)
        written[sample["key"]] = sample
    write_latent_shards(written.values(), tmp_path / "lat", samples_per_shard=2)
    cfg = DataConfig(shards=str(tmp_path / "lat"), kind="latent", batch_size=2, shuffle_buffer=2)
    batch = next(iter(build_loader(cfg, dp_rank=0, dp_size=1, seed=0)))
    assert batch["latents"].shape == (2, 4, 2, 3, 3)
    # every caption zero-padded to Wan's 512 tokens, whatever the batch's longest caption (as the sampler)
    assert batch["text"].shape == (2, 512, 6) and "text_mask" not in batch
    for i, key in enumerate(batch["key"]):
        length = written[key]["text"].shape[0]
        torch.testing.assert_close(batch["latents"][i], written[key]["latents"], rtol=0, atol=0)
        torch.testing.assert_close(batch["text"][i, :length], written[key]["text"], rtol=0, atol=0)
        assert batch["caption"][i] == written[key]["caption"]
        assert not batch["text"][i, length:].any()


SP_RANK_SCRIPT = """
import itertools, sys, torch
from megavg.data import DataConfig, build_loader
cfg = DataConfig(shards=sys.argv[1], frames=4, frame_stride=2, size=(16, 16), batch_size=2, shuffle_buffer=4)
for b in itertools.islice(build_loader(cfg, dp_rank=1, dp_size=2, seed=5, start_step=2), 3):
    print(",".join(b["key"]), float(b["video"].double().sum()))
"""


def test_another_process_gets_the_same_batches(video_shards):
    """An SP rank is another process (other hash seed): its batches must match bit for bit."""
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", SP_RANK_SCRIPT, video_shards]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=120).stdout
    here = take(build_loader(cfg_for(video_shards), dp_rank=1, dp_size=2, seed=5), 5)[2:]
    assert out.split("\n")[:3] == [f"{','.join(b['key'])} {float(b['video'].double().sum())}" for b in here]
