"""PyAV decoding, clip sampling and resize/crop, checked against plain PyAV decodes and exact cases."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from megavg.data import real_clips
from megavg.data.video import (
    VideoError,
    check_video_file,
    clip_start,
    decode_frames,
    decode_size,
    nearest_bucket,
    probe_video,
    resize_crop,
)
from megavg.utils.errors import UserError


def carphone():
    return next(p for p in real_clips() if p.name == "carphone_pristine.mp4")


def test_real_clips_are_bundled_mp4s():
    names = {p.name for p in real_clips()}
    assert {"carphone_pristine.mp4", "bikes.mp4"} <= names


def test_probe_matches_container_metadata():
    info = probe_video(carphone(), "carphone")
    with av.open(str(carphone())) as container:
        stream = container.streams.video[0]
        assert (info.frames, info.width, info.height) == (stream.frames, stream.width, stream.height)
        assert info.fps == pytest.approx(float(stream.average_rate))
    assert (info.frames, info.width, info.height) == (120, 176, 144)


def test_decode_frames_picks_the_strided_frames():
    with av.open(str(carphone())) as container:  # reference: every frame, plain PyAV
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    clip = decode_frames(carphone().read_bytes(), start=10, count=4, stride=3, size=(144, 176))
    assert clip.shape == (4, 144, 176, 3) and clip.dtype == np.uint8
    for i, frame in enumerate(clip):
        np.testing.assert_array_equal(frame, every[10 + 3 * i])
    with pytest.raises(VideoError, match="fewer than"):
        decode_frames(carphone().read_bytes(), start=110, count=4, stride=5, size=(36, 44))


@pytest.mark.parametrize("start", [100, 200])  # bikes.mp4 has keyframes at 0, 30, 76, 137, 187, 242
def test_decode_frames_seeks_to_the_right_frames(start):
    bikes = next(p for p in real_clips() if p.name == "bikes.mp4")
    with av.open(str(bikes)) as container:
        every = [
            f.reformat(width=80, height=34, format="rgb24").to_ndarray() for f in container.decode(video=0)
        ]
    clip = decode_frames(bikes.read_bytes(), start=start, count=3, stride=4, size=(34, 80))
    for i, frame in enumerate(clip):
        np.testing.assert_array_equal(frame, every[start + 4 * i])


def test_clip_start_is_uniform_over_valid_starts():
    rng = np.random.default_rng(0)
    starts = {clip_start(rng, total=20, count=4, stride=2) for _ in range(500)}
    assert starts == set(range(0, 20 - 7 + 1))  # span 7 frames: starts 0..13
    with pytest.raises(VideoError, match="needs 7"):
        clip_start(rng, total=6, count=4, stride=2)


def test_resize_crop_exact_cases():
    frames = np.full((2, 30, 60, 3), 51, np.uint8)  # constant colour stays constant
    out = resize_crop(frames, (16, 16))
    assert out.shape == (3, 2, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full_like(out, 51 / 127.5 - 1))
    stripes = np.zeros((1, 8, 24, 3), np.uint8)  # left third 0, middle 255, right third 0
    stripes[:, :, 8:16] = 255
    out = resize_crop(stripes, (8, 8))  # no resize needed: the centre crop is the white third
    torch.testing.assert_close(out, torch.ones_like(out))


def test_buckets_follow_aspect_ratio():
    buckets = [(32, 32), (32, 64), (64, 32)]
    assert nearest_bucket(272, 640, buckets) == (32, 64)
    assert nearest_bucket(144, 176, buckets) == (32, 32)
    assert nearest_bucket(640, 272, buckets) == (64, 32)
    assert decode_size(272, 640, buckets) == (64, 151)  # covers 64 rows for the (64, 32) bucket
    assert decode_size(10, 10, buckets) == (10, 10)  # never upscaled while decoding


def test_bad_files_give_one_clear_error(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    with pytest.raises(UserError, match="no such file"):
        check_video_file(tmp_path / "missing.mp4", 8)
    with pytest.raises(UserError, match="empty file"):
        check_video_file(empty, 8)
    with pytest.raises(UserError, match="not a decodable video"):
        check_video_file(text, 8)
    with pytest.raises(UserError, match="only 120 frames"):
        check_video_file(carphone(), 121)
