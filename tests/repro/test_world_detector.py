"""The reproduction's world and its prompt-accuracy detector (megavg/repro/world.py, detector.py)."""

import random

import av
import numpy as np

from megavg.repro import detector, world
from megavg.repro.data import write_clip


def test_splits_are_deterministic_and_heldout_captions_unseen():
    train = world.split_scenes("train", 300, seed=0)
    assert train == world.split_scenes("train", 300, seed=0)
    held = world.heldout_captions()
    assert len(held) == len(world.all_captions()) // world.HELDOUT_EVERY
    heldout = world.split_scenes("heldout", 48, seed=1)
    train_captions = {s.caption for s in train}
    assert {s.caption for s in heldout}.isdisjoint(train_captions)
    assert all(detector.caption_target(s.caption) == (s.colour, s.direction) for s in heldout)


def test_object_stays_in_frame_and_travels_half_the_frame():
    for scene in world.split_scenes("train", 200, seed=3):
        path = world.trajectory(scene, 16, 64)
        side = round(world.OBJECT * 64)
        assert path.min() >= 0 and path.max() <= 64 - side
        dx, dy = world.DIRECTIONS[scene.direction]
        assert np.allclose(path[-1] - path[0], [dy * 32, dx * 32])


def read_mp4(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_detector_reads_real_clips_after_mp4_and_fails_on_shuffled_captions(tmp_path):
    """Held-out clips written and decoded as the shards hold them: every caption recovered; the same clips
    against shuffled captions score about chance (colour 1/6, direction 1/4, both 1/24)."""
    scenes = world.split_scenes("heldout", 48, seed=5)
    videos = []
    for i, scene in enumerate(scenes):
        write_clip(tmp_path / f"{i}.mp4", world.render(scene, 16, 64))
        videos.append(read_mp4(tmp_path / f"{i}.mp4"))
    captions = [s.caption for s in scenes]
    assert detector.prompt_accuracy(videos, captions) == {"colour": 1.0, "direction": 1.0, "both": 1.0}
    random.Random(0).shuffle(captions)
    shuffled = detector.prompt_accuracy(videos, captions)
    assert shuffled["both"] < 0.2 and shuffled["direction"] < 0.5 and shuffled["colour"] < 0.4


def test_detector_misses_an_empty_or_static_clip():
    background = np.full((16, 64, 64, 3), world.BACKGROUNDS["dark"], dtype=np.uint8)
    assert detector.detect(background) == (None, None)
    still = world.render(world.Scene("square", "red", "left", "dark", 0.5, 0.5), 16, 64)
    still[:] = still[:1]  # the first frame repeated: colour right, no motion to fit
    colour, _ = detector.detect(still)
    assert colour == "red"
