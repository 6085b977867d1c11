"""``python -m megavg.eval recon``: per-video PSNR (numpy formula on PyAV-decoded frames) and SSIM
(megavg.metrics.video on the same frames), matched by name; unmatched names are one error line."""

import json

import numpy as np
import pytest
import torch

from megavg.data.shards import write_shards
from megavg.eval.__main__ import main
from megavg.metrics.video import ssim
from megavg.utils.errors import run_cli
from tests.eval.conftest import COUNT
from tests.infer.tiny_pipeline import read_video as decode


def test_recon_metrics_per_video_and_mean(video_dirs, capsys):
    real, fake = video_dirs
    main(["recon", str(real), str(fake)])
    out = json.loads(capsys.readouterr().out)
    assert out["videos"] == COUNT and sorted(out["per_video"]) == [f"v{i}" for i in range(COUNT)]
    for i in range(COUNT):
        a, b = decode(real / f"v{i}.mp4").astype(np.float64), decode(fake / f"v{i}.mp4").astype(np.float64)
        mse = np.mean((a / 127.5 - b / 127.5) ** 2)
        assert out["per_video"][f"v{i}"]["psnr"] == pytest.approx(10 * np.log10(4 / mse), rel=1e-5)
        to_video = lambda x: torch.from_numpy(x / 127.5 - 1).permute(3, 0, 1, 2)[None]  # noqa: E731
        assert out["per_video"][f"v{i}"]["ssim"] == pytest.approx(
            ssim(to_video(b), to_video(a)).item(), rel=1e-5
        )
    for key in ("psnr", "ssim"):
        values = np.array([r[key] for r in out["per_video"].values()])
        # two float64 sums of the same COUNT numbers, in any order: each within COUNT·eps·sum|x|
        tol = 2 * COUNT * np.finfo(np.float64).eps * np.abs(values).mean()
        assert out[key] == pytest.approx(values.mean(), rel=0, abs=tol)


def test_unmatched_names(video_dirs, tmp_path, capsys):
    real, _ = video_dirs
    other = tmp_path / "other"
    other.mkdir()
    for i in range(COUNT - 1):
        (other / f"v{i}.mp4").write_bytes((real / f"v{i}.mp4").read_bytes())
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["recon", str(real), str(other)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and f"no video named 'v{COUNT - 1}'" in err[0]


def test_video_shards_read_as_the_files_they_hold(video_dirs, tmp_path, capsys):
    real, fake = video_dirs
    samples = [
        {"__key__": f"v{i}", "mp4": (real / f"v{i}.mp4").read_bytes(), "json": b"{}"} for i in range(COUNT)
    ]
    write_shards(iter(samples), tmp_path / "shards", "video", samples_per_shard=3)
    main(["recon", str(real), str(fake)])
    files = json.loads(capsys.readouterr().out)
    main(["recon", str(tmp_path / "shards"), str(fake)])
    assert json.loads(capsys.readouterr().out) == files
