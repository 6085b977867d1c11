"""Validation videos of a Wan 2.2 two-expert run (one job per expert): with ``validation.partner`` the run
of the low-noise expert samples with the frozen high-noise expert before the boundary and its live self
after it; the video equals what ``generate`` makes from the two-expert pipeline of the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megavg.infer.export import main as export
from megavg.infer.generate import main as generate
from megavg.train.config import load_config
from megavg.train.validation import check
from megavg.utils.errors import UserError
from tests.distributed.launch import REPO
from tests.infer.tiny_pipeline import read_video, tiny_dit
from tests.train.test_validation import PROMPTS, overrides, tiny, train, video  # noqa: F401 (fixture)

BOUNDARY = 0.9  # 2 UniPC steps at shift 5: t = 999 (high-noise expert), then 833 (low-noise)


@pytest.fixture(scope="module")
def high(tiny):  # noqa: F811
    root, _ = tiny
    torch.manual_seed(5)
    tiny_dit(False).save(root / "high")  # the frozen high-noise expert (another random DiT)
    return root / "high"


def test_low_noise_expert_run_validates_with_its_partner(tiny, high):  # noqa: F811
    root, paths = tiny
    two = [
        f"validation.partner={high}",
        f"task.args.timestep_range=[0.0,{BOUNDARY}]",
        "validation.guidance_2=2.0",
        "optimizer.lr=0.0",
    ]  # lr 0: the live model is its init
    train(overrides(root, paths, "low", 2, True, *two))
    pipe = root / "pipe22"
    export(["--transformer", str(high), "--transformer-2", str(paths["t2v"]), "--boundary", str(BOUNDARY),
            "--vae", str(paths["vae"]), "--text-encoder", str(paths["text"]), "--dtype", "fp32",
            "--out", str(pipe)])  # fmt: skip
    result = generate([str(pipe), "--prompt", PROMPTS[1], "--seed", "8", "--size", "16", "16", "--frames",
                       "8", "--steps", "2", "--guidance", "3.0", "--guidance-2", "2.0", "--shift", "5.0",
                       "--dtype", "fp32", "--device", "cpu", "--no-progress",
                       "--out", str(root / "g22.mp4")])  # fmt: skip
    assert result["experts"] == "both experts on cpu"
    assert np.array_equal(read_video(root / "g22.mp4"), video(root / "low", 2, 1))
    train(overrides(root, paths, "alone", 2, True, "optimizer.lr=0.0"))  # no partner: another video
    assert not np.array_equal(video(root / "alone", 2, 1), video(root / "low", 2, 1))


def test_partner_config_errors(tiny, high, tmp_path):  # noqa: F811
    root, paths = tiny
    base = overrides(root, paths, "x")
    bad = {
        (f"validation.partner={high}",): "timestep_range .* must be \\[b, 1.0\\]",
        (
            f"validation.partner={tmp_path}",
            "task.args.timestep_range=[0.9,1.0]",
        ): "no such model folder|model",
        (f"validation.partner={paths['i2v']}", "task.args.timestep_range=[0.9,1.0]"): "does not match",
        ("validation.guidance_2=2.0",): "needs a partner",
    }
    for extra, message in bad.items():
        with pytest.raises(UserError, match=message):
            check(load_config(REPO / "configs/train/adapt_3_lora.yaml", [*base, *extra]))
