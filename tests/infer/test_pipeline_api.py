"""``megavg.Pipeline``: the frames it returns are the frames ``python -m megavg.infer.generate`` hands to
its video encoder for the same arguments (bit-equal, T2V and I2V), ``save`` writes the MP4 the CLI
writes, a second call on the loaded pipeline repeats the first, and ``import megavg`` stays light."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import megavg
from megavg.infer import generate
from megavg.infer.export import main as export
from megavg.infer.video_io import VideoWriter
from megavg.utils.errors import UserError
from tests.distributed.generate_worker import record_pixels
from tests.distributed.launch import REPO
from tests.infer.tiny_pipeline import read_video, write_png

CLI = ["--dtype", "fp32", "--steps", "2", "--no-progress", "--size", "32", "48", "--frames", "8",
       "--seed", "5", "--device", "cpu"]  # fmt: skip
API = {"steps": 2, "size": (32, 48), "frames": 8, "seed": 5}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory, tiny_parts):
    root = tmp_path_factory.mktemp("api")
    write_png(root / "first.png", 30, 40)
    common = ["--vae", str(tiny_parts["vae"]), "--text-encoder", str(tiny_parts["text"]), "--dtype", "fp32"]
    export(["--transformer", str(tiny_parts["t2v"]), *common, "--out", str(root / "t2v")])
    export(["--transformer", str(tiny_parts["i2v"]), *common, "--image-encoder", str(tiny_parts["clip"]),
            "--out", str(root / "i2v")])  # fmt: skip
    return root


def cli_frames(argv: list[str]) -> np.ndarray:
    """The uint8 frames [T, H, W, 3] the CLI hands to its video encoder."""
    pixels: list = []
    real = VideoWriter.write
    record_pixels(pixels)
    try:
        generate.main(argv)
    finally:
        VideoWriter.write = real
    return torch.cat(pixels, dim=1).permute(1, 2, 3, 0).numpy()  # 3, T, H, W -> T, H, W, 3


def test_t2v_frames_equal_the_cli_and_save_writes_the_cli_video(pipes, tmp_path):
    cli_out = tmp_path / "cli.mp4"
    expected = cli_frames([str(pipes / "t2v"), "--prompt", "a red fox in snow", "--out", str(cli_out), *CLI])
    pipe = megavg.Pipeline.from_pretrained(pipes / "t2v", device="cpu", dtype="fp32")
    frames = pipe("a red fox in snow", options=None, **API)
    assert frames.dtype == np.uint8 and frames.shape == (8, 32, 48, 3) and frames.std() > 1
    np.testing.assert_array_equal(frames, expected)
    np.testing.assert_array_equal(pipe("a red fox in snow", **API), frames)  # models kept loaded: the same
    assert set(pipe._loaded) == {"text", "vae", "t2v"}
    pipe.save(frames, tmp_path / "api.mp4")
    np.testing.assert_array_equal(read_video(tmp_path / "api.mp4"), read_video(cli_out))
    assert not np.array_equal(pipe("a red fox", **API), frames)  # the prompt matters


def test_i2v_frames_equal_the_cli_for_a_path_and_for_pixels(pipes, tmp_path):
    image = pipes / "first.png"
    argv = [str(pipes / "i2v"), "--prompt", "a fox", "--image", str(image), "--out", str(tmp_path / "v.mp4")]
    expected = cli_frames([*argv, *CLI, "--guidance", "3"])
    pipe = megavg.Pipeline.from_pretrained(pipes / "i2v", device="cpu", dtype="fp32", keep_loaded=False)
    frames = pipe("a fox", image, guidance=3.0, **API)
    assert frames.shape == (8, 32, 44, 3)  # the 30x40 image's aspect at the 32x48 area
    np.testing.assert_array_equal(frames, expected)
    pixels = read_video(image)[0]  # the PNG's pixels, uint8 [H, W, 3]
    np.testing.assert_array_equal(pipe("a fox", pixels, guidance=3.0, **API), expected)
    assert pipe._loaded == {}  # keep_loaded=False: nothing held between calls


def test_bad_input_raises_before_loading(pipes, tmp_path):
    with pytest.raises(UserError, match="no such pipeline"):
        megavg.Pipeline.from_pretrained(tmp_path / "nope", device="cpu")
    pipe = megavg.Pipeline.from_pretrained(pipes / "t2v", device="cpu", dtype="fp32")
    with pytest.raises(UserError, match="multiples of 4"):
        pipe("a fox", size=(30, 48), steps=1)
    with pytest.raises(UserError, match="prompt is empty"):
        pipe("  ", steps=1)
    with pytest.raises(UserError, match=r"uint8 pixels \[H, W, 3\]"):
        pipe("a fox", np.zeros((4, 4), np.uint8))
    with pytest.raises(UserError, match="unsupported video extension"):
        pipe.save(np.zeros((4, 32, 32, 3), np.uint8), tmp_path / "v.avi")
    assert pipe._loaded == {}


def test_import_megavg_is_light():
    code = "import sys, megavg; print('torch' in sys.modules); print(megavg.Pipeline.__module__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "megavg.infer.runner"], proc.stderr[-2000:]
