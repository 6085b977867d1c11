"""``python -m megavg.eval fvd`` with a random I3D: ~0 for a folder against itself; for two folders the
Fréchet distance (scipy's sqrtm formula) of features the test extracts itself with the I3D module from
frames PyAV decodes; bad input is one error line and exit 2."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from megavg.eval.__main__ import main
from megavg.eval.i3d import load_i3d
from megavg.utils.errors import run_cli
from tests.eval.conftest import COUNT, FRAMES
from tests.infer.tiny_pipeline import read_video as decode

RESIZE = 24  # != the 32x32 videos: the resize is exercised
CLIP = FRAMES // 2  # the first frames only: the rest is not read
ARGS = ["--i3d", "random", "--frames", str(CLIP), "--resize", str(RESIZE)]


def cli(capsys, *argv) -> dict:
    main(list(argv))
    return json.loads(capsys.readouterr().out)


def reference_features(folder) -> np.ndarray:
    model = load_i3d("random")
    feats = []
    for i in range(COUNT):
        frames = torch.from_numpy(decode(folder / f"v{i}.mp4")[:CLIP]).float()  # T,H,W,3 uint8 values
        video = frames.permute(3, 0, 1, 2) / 255 * 2 - 1  # 3,T,H,W in [-1, 1]
        video = F.interpolate(
            video, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False
        )  # square in, square out
        with torch.no_grad():
            feats.append(model(video[None]).double()[0].numpy())
    return np.stack(feats)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(
        np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real)
    )


def test_fvd_self_zero_and_pair_matches_independent_computation(video_dirs, capsys):
    real, fake = video_dirs
    pair = cli(capsys, "fvd", str(real), str(fake), *ARGS)
    real_feats, fake_feats = reference_features(real), reference_features(fake)
    expected = scipy_frechet(real_feats, fake_feats)
    spread = np.trace(np.cov(real_feats, rowvar=False))  # the features vary with the video
    assert expected > 0.1 * spread > 0 and pair["fvd"] == pytest.approx(expected, rel=1e-4)
    assert pair["real_videos"] == pair["fake_videos"] == COUNT and "means nothing" in pair["note"]
    same = cli(capsys, "fvd", str(real), str(real), *ARGS)
    assert abs(same["fvd"]) < 1e-9 * pair["fvd"]


def test_bad_input_is_one_error_line(video_dirs, tmp_path, capsys):
    real, _ = video_dirs
    empty, broken, single = tmp_path / "empty", tmp_path / "broken", tmp_path / "single"
    empty.mkdir(), broken.mkdir(), single.mkdir()
    (single / "notes.mp4").write_text("not a video")
    for i in range(2):
        (broken / f"b{i}.mp4").write_bytes((real / f"v{i}.mp4").read_bytes()[:400])  # cut short
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7, 7)}, wrong)
    cases = {
        "no videos in it": ["fvd", str(empty), str(real), *ARGS],
        "single/notes.mp4": ["fvd", str(single), str(real), *ARGS],
        "b0.mp4": ["fvd", str(broken), str(real), *ARGS],
        f"has {FRAMES} frames, the evaluation needs {FRAMES + 1}": [
            "fvd",
            str(real),
            str(real),
            "--i3d",
            "random",
            "--frames",
            str(FRAMES + 1),
        ],  # fmt: skip
        "no such I3D weights file": ["fvd", str(real), str(real), "--i3d", str(tmp_path / "none.pt")],
        "not a pytorch-i3d RGB state dict": ["fvd", str(real), str(real), "--i3d", str(wrong)],
    }
    for expected, argv in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, argv)
        err = capsys.readouterr()
        lines = err.err.strip().splitlines()
        assert exit_info.value.code == 2 and len(lines) == 1 and expected in lines[0], (expected, err.err)
        assert lines[0].startswith("error: ") and err.out == ""


def test_cached_reference_features_give_the_folder_number(video_dirs, tmp_path, capsys):
    real, fake = video_dirs
    ref = tmp_path / "real.npz"
    written = cli(capsys, "features", str(real), *ARGS, "--out", str(ref))
    assert written["videos"] == COUNT and written["i3d"] == "random" and "means nothing" in written["note"]
    with np.load(ref) as data:
        assert list(data["names"]) == [f"v{i}" for i in range(COUNT)] and int(data["frames"]) == CLIP
        np.testing.assert_allclose(data["features"], reference_features(real), rtol=1e-4, atol=1e-6)
        mu, sigma = data["mu"], data["sigma"]
    direct = cli(capsys, "fvd", str(real), str(fake), *ARGS)
    cached = cli(capsys, "fvd", str(fake), "--ref-stats", str(ref), *ARGS)
    assert cached["fvd"] == pytest.approx(direct["fvd"], rel=1e-12) and cached["real_videos"] == COUNT
    moments_only = tmp_path / "moments.npz"  # a foreign cache: mean and covariance alone
    np.savez(moments_only, mu=mu, sigma=sigma)
    assert cli(capsys, "fvd", str(fake), "--ref-stats", str(moments_only), *ARGS)["fvd"] == pytest.approx(
        direct["fvd"], rel=1e-12
    )
    cases = {
        f"made with frames {CLIP}, this run uses {CLIP - 1}": [
            "fvd", str(fake), "--ref-stats", str(ref), "--i3d", "random", "--frames", str(CLIP - 1),
            "--resize", str(RESIZE)],
        "takes FAKE --ref-stats NPZ, got 2 folder(s)": [
            "fvd", str(real), str(fake), "--ref-stats", str(ref), *ARGS],
        "unreadable reference statistics": [
            "fvd", str(fake), "--ref-stats", str(tmp_path / "none.npz"), *ARGS],
        "must end in .npz": ["features", str(real), *ARGS, "--out", str(tmp_path / "f.txt")],
    }  # fmt: skip
    for expected, argv in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and expected in err[0], (expected, err)
