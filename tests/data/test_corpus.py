"""Damaged and unusual videos (tests/data/corpus.py) through make_shards, the decoder and the loader.

Bad ones: one ``error:`` line naming the file, exit 2, nothing written (``--skip-bad``: a warning each);
a damaged sample inside shards is skipped, counted and warned about once. Odd ones: frame count,
displayed size, orientation and pixels survive (compared with the frames that were encoded).
"""

from __future__ import annotations

import itertools
import json
import tarfile

import numpy as np
import pytest
import torch

from megavg.data import DataConfig, build_loader
from megavg.data import loader as loader_module
from megavg.data.make_shards import main
from megavg.data.video import VideoError, checked_frames, decode_frames, open_video
from megavg.utils.errors import run_cli
from tests.data.conftest import write_video_set
from tests.data.corpus import video_corpus

BAD = sorted(video_corpus().bad)
ODD = sorted(video_corpus().odd)
MAX_PIXEL_ERROR = 4.0  # mean |decoded - encoded| per frame, uint8 (lossy codecs on tiny frames)


@pytest.fixture(scope="session")
def corpus():
    return video_corpus()


def run(argv) -> int:
    try:
        run_cli(main, [str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code
    return 0


def assert_frames_match(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    errors = np.abs(got.astype(np.int16) - want.astype(np.int16)).mean(axis=(1, 2, 3))
    assert errors.max() < MAX_PIXEL_ERROR, errors


@pytest.mark.parametrize("name", BAD)
def test_bad_video_stops_make_shards(corpus, tmp_path, capsys, name):
    out = tmp_path / "out"
    assert run([corpus.good, corpus.bad[name], "--out", out, "--min-frames", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(corpus.bad[name]) in err[0], err
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no temporary folder


def test_skip_bad_warns_once_per_bad_file(corpus, tmp_path, warnings_log):
    files = [corpus.bad[name] for name in BAD if name != "folder.mp4"]  # a folder is an input, not a video
    assert run([corpus.good, *files, "--out", tmp_path / "out", "--skip-bad", "--min-frames", "1"]) == 0
    assert len(warnings_log) == len(files)
    assert all(str(path) in message for path, message in zip(files, warnings_log))
    assert json.loads((tmp_path / "out" / "index.json").read_text())["samples"] == 1


def test_folder_without_video_is_an_error_among_good_inputs(corpus, tmp_path, capsys):
    empty = tmp_path / "clips"
    empty.mkdir()
    (empty / "notes.txt").write_text("no video here")
    assert run([corpus.good, empty, "--out", tmp_path / "out"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {empty}: folder holds no video file (mp4, webm, mkv, mov, avi)"
    )


@pytest.mark.parametrize("name", ["front_cut70.mp4", "back_cut50.mp4"])
def test_decode_error_at_the_end_is_raised_not_swallowed(corpus, name):
    """Decoding without the completeness check still fails on a cut stream: the decoder's own error
    must surface (frame-threaded decoding drops it)."""
    with pytest.raises(VideoError, match="not a decodable video"):
        with open_video(corpus.bad[name], name) as container:
            for _ in checked_frames(container, name, full=False):
                pass


def shard_metas(out) -> dict[str, dict]:
    metas = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.load(tar.extractfile(member))
                    metas[meta["source"]] = meta
    return metas


def test_odd_videos_keep_frames_and_displayed_size_in_shards(corpus, tmp_path):
    paths = [corpus.odd[name].path for name in ODD]
    assert run([*paths, "--out", tmp_path / "out", "--min-frames", "1"]) == 0
    metas = shard_metas(tmp_path / "out")
    for name in ODD:
        odd = corpus.odd[name]
        meta = metas[name]
        assert (meta["frames"], meta["height"], meta["width"]) == (len(odd.frames), *odd.size), name
        assert meta["rotation"] == odd.rotation


@pytest.mark.parametrize("name", ODD)
def test_odd_videos_decode_upright_with_every_frame(corpus, name):
    odd = corpus.odd[name]
    data = odd.path.read_bytes()
    assert_frames_match(decode_frames(data, 0, len(odd.frames), 1, odd.size), odd.frames)
    if len(odd.frames) >= 5:  # a later clip, every other frame (seeks)
        assert_frames_match(decode_frames(data, 2, 2, 2, odd.size), odd.frames[2:6:2])


@pytest.mark.parametrize("name", ODD)
def test_odd_videos_reach_the_loader_upright_at_their_displayed_size(corpus, tmp_path, name):
    odd = corpus.odd[name]
    assert run([odd.path, "--out", tmp_path / "shards", "--min-frames", "1"]) == 0
    wide, tall = (odd.size[0], odd.size[1] * 2), (odd.size[0] * 2, odd.size[1])
    buckets = [wide, odd.size, tall]  # the displayed aspect must pick the middle one
    cfg = DataConfig(
        shards=str(tmp_path / "shards"), frames=len(odd.frames), buckets=buckets, shuffle_buffer=1
    )
    batch = next(iter(build_loader(cfg, dp_rank=0, dp_size=1, seed=0)))
    video = batch["video"][0]  # 3, T, H, W in [-1, 1]
    assert video.shape == (3, len(odd.frames), *odd.size)
    frames = ((video.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert_frames_match(frames, odd.frames)


def test_cut_video_inside_shards_is_skipped_counted_and_warned_once(corpus, tmp_path, warnings_log):
    """Shards written before the completeness check may hold a cut clip: the loader skips it."""
    good = corpus.good.read_bytes()
    meta = {"frames": 24, "height": 24, "width": 32, "caption": ""}  # what the cut clips declare
    samples = [{"__key__": f"g{i}", "mp4": good, "json": json.dumps(meta).encode()} for i in range(2)]
    for name in ("front_cut_clean.mp4", "front_cut70.mp4"):
        samples.append(
            {"__key__": name[:-4], "mp4": corpus.bad[name].read_bytes(), "json": json.dumps(meta).encode()}
        )
    shards = write_video_set(tmp_path / "shards", samples, per_shard=4)
    cfg = DataConfig(shards=shards, frames=24, size=(24, 32), shuffle_buffer=1)
    loader = build_loader(cfg, dp_rank=0, dp_size=1, seed=0)
    keys = [b["key"][0] for b in itertools.islice(loader, 8)]  # 4 epochs over the 2 good samples
    assert set(keys) == {"g0", "g1"} and loader.skipped >= 4
    assert len(warnings_log) == 2 and all(
        "fewer than 24 frames" in m or "decodable" in m for m in warnings_log
    )


def test_a_bug_in_decoding_propagates_instead_of_being_skipped(video_shards, monkeypatch):
    """Only decode and format errors are skipped: a programming error (TypeError) stops the loader."""

    def buggy(*args, **kwargs):
        return None + 1  # a bug in megavg's own code

    monkeypatch.setattr(loader_module, "decode_frames", buggy)
    cfg = DataConfig(shards=video_shards, frames=4, size=(16, 16), shuffle_buffer=2)
    with pytest.raises(TypeError):
        next(iter(build_loader(cfg, dp_rank=0, dp_size=1, seed=0)))


def test_corrupt_data_still_counts_as_corrupt(corpus, tmp_path, warnings_log):
    """The narrowed skip still covers av errors, bad json and missing members."""
    good = corpus.good.read_bytes()
    meta = json.dumps({"frames": 24, "height": 24, "width": 32}).encode()
    samples = [
        {"__key__": "good", "mp4": good, "json": meta},
        {"__key__": "badjson", "mp4": good, "json": b"{not json"},
        {"__key__": "nomp4", "json": meta},
        {"__key__": "nojson", "mp4": good},
        {
            "__key__": "badmeta",
            "mp4": good,
            "json": json.dumps({"frames": "many", "height": 1, "width": 1}).encode(),
        },
        {"__key__": "noise", "mp4": bytes(range(256)) * 8, "json": meta},
    ]
    shards = write_video_set(tmp_path / "shards", samples, per_shard=6)
    cfg = DataConfig(shards=shards, frames=4, size=(24, 32), shuffle_buffer=1)
    loader = build_loader(cfg, dp_rank=0, dp_size=1, seed=0)
    assert {b["key"][0] for b in itertools.islice(loader, 3)} == {"good"}
    assert loader.skipped >= 5
    bad = ("badjson", "nomp4", "nojson", "badmeta", "noise")
    assert len(warnings_log) == 5 and all(f"sample {key} " in m for key, m in zip(bad, warnings_log))


def test_rotated_clip_in_a_shard_without_rotation_metadata_is_skipped(corpus, tmp_path, warnings_log):
    """Shards written before rotation support record the stored size and no rotation: such a sample
    would come out squashed, so it is skipped with a warning that says to re-run make_shards."""
    good, rotated = corpus.good.read_bytes(), corpus.odd["rotated.mp4"].path.read_bytes()
    old_meta = {"frames": 6, "height": 16, "width": 24}  # stored size, no "rotation" key
    samples = [
        {"__key__": "good", "mp4": good, "json": json.dumps({**old_meta, "frames": 24}).encode()},
        {"__key__": "old", "mp4": rotated, "json": json.dumps(old_meta).encode()},
    ]
    cfg = DataConfig(shards=write_video_set(tmp_path / "shards", samples, 2), frames=4, size=(16, 24))
    loader = build_loader(cfg, dp_rank=0, dp_size=1, seed=0)
    assert {b["key"][0] for b in itertools.islice(loader, 4)} == {"good"} and loader.skipped >= 1
    assert len(warnings_log) == 1 and "re-run make_shards" in warnings_log[0]
