"""``python -m megavg.infer.scaling``: the factor it writes gives unit-std latents on the same clips (an
independent ``torch.std`` over every latent element, the clips cut as precompute cuts them), an encoder
whose output is deliberately 3x larger gets a third of the factor, and bad input is one error line."""

import json

import av
import numpy as np
import pytest
import torch

import megavg.models
from megavg.data.make_shards import main as make_shards
from megavg.data.samples import real_clips
from megavg.data.video import resize_crop
from megavg.infer.scaling import main as scaling
from megavg.utils.errors import run_cli

FRAMES, SIZE = 8, (32, 48)
NAMES = ("bikes.mp4", "carphone_pristine.mp4")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    clips = [c for c in real_clips() if c.name in NAMES]
    make_shards([*map(str, clips), "--out", str(root / "videos"), "--samples-per-shard", "1"])
    return root / "videos", clips


def clip_latents(vae, clips) -> torch.Tensor:
    """Every latent element of the clips, encoded here from PyAV frames (resized and cropped to SIZE)."""
    out = []
    for clip in clips:
        with av.open(str(clip)) as container:  # T,H,W,3 uint8
            frames = np.stack(
                [f.to_ndarray(format="rgb24") for _, f in zip(range(FRAMES), container.decode(video=0))]
            )
        with torch.no_grad():
            out.append(vae.encode(resize_crop(frames, SIZE)[None]).flatten())
    return torch.cat(out)


def run(folder, shards, *extra) -> dict:
    argv = [
        str(folder),
        "--shards",
        str(shards),
        "--frames",
        str(FRAMES),
        "--size",
        *map(str, SIZE),
        "--device",
        "cpu",
    ]
    return scaling([*argv, *extra])


def test_written_factor_gives_unit_std_and_scales_inversely(shards, tmp_path, capsys):
    videos, clips = shards
    torch.manual_seed(0)
    vae = megavg.models.build("dc-ae-v-tiny", scaling_factor=0.5)
    vae.save(tmp_path / "vae")
    printed = run(tmp_path / "vae", videos)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == printed and printed["clips"] == 2
    assert megavg.models.load(tmp_path / "vae").args.scaling_factor == 0.5  # printed only, not written
    run(tmp_path / "vae", videos, "--write")
    loaded = megavg.models.load(tmp_path / "vae")
    factor = loaded.args.scaling_factor
    assert factor == pytest.approx(printed["scaling_factor"], rel=1e-12) and factor != 0.5
    latents = clip_latents(loaded, clips) * factor  # what precompute stores
    assert latents.double().std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
    for param in vae.encoder.project_out.parameters():  # the encoder's last (linear) layer x3
        param.data *= 3
    vae.save(tmp_path / "vae3")
    assert run(tmp_path / "vae3", videos)["scaling_factor"] == pytest.approx(factor / 3, rel=1e-4)


def test_bad_input_is_one_error_line(shards, tmp_path, capsys):
    videos, _ = shards
    megavg.models.build("wan-tiny-t2v").save(tmp_path / "wan")
    for folder, expected in (
        (tmp_path / "none", "not a megavg model folder"),
        (tmp_path / "wan", "not a DC-AE-V"),
    ):
        argv = [str(folder), "--shards", str(videos), "--frames", "8", "--size", "32", "32"]
        with pytest.raises(SystemExit):
            run_cli(scaling, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
