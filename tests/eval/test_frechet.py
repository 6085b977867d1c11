"""frechet_distance against the closed form for commuting covariances, and against scipy's sqrtm formula."""

import numpy as np
import pytest
import scipy.linalg

from megavg.eval import frechet_distance
from megavg.eval.frechet import frechet_from_moments


def commuting_gaussians(dim: int, seed: int):
    """Means and covariances Q diag(a) Q^T, Q diag(b) Q^T (they commute) and their closed-form distance."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    a, b = rng.uniform(0.2, 3.0, dim), rng.uniform(0.2, 3.0, dim)
    m1, m2 = rng.normal(size=dim), rng.normal(size=dim)
    closed = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    return m1, (q * a) @ q.T, m2, (q * b) @ q.T, closed


def test_exact_moments_give_the_closed_form():
    m1, s1, m2, s2, closed = commuting_gaussians(16, 0)
    assert frechet_from_moments(m1, s1, m2, s2) == pytest.approx(closed, rel=1e-12)
    # diagonal covariances: the textbook case ||m1-m2||^2 + sum (sqrt(s1) - sqrt(s2))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = 3 * 1.0**2 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0.5) ** 2
    got = frechet_from_moments(np.zeros(3), np.diag(a), np.ones(3), np.diag(b))
    assert got == pytest.approx(expected, rel=1e-14)


def test_samples_approach_the_closed_form():
    m1, s1, m2, s2, closed = commuting_gaussians(8, 1)
    rng = np.random.default_rng(2)
    x = rng.multivariate_normal(m1, s1, size=200_000)
    y = rng.multivariate_normal(m2, s2, size=200_000)
    assert frechet_distance(x, y) == pytest.approx(closed, rel=0.01)


def test_matches_scipy_sqrtm_formula_and_handles_singular_covariances():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(300, 20)), rng.normal(0.3, 1.5, size=(250, 20)) @ rng.normal(size=(20, 20))
    mx, my = x.mean(0), y.mean(0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(cx @ cy).real
    reference = np.sum((mx - my) ** 2) + np.trace(cx + cy - 2 * root)
    assert frechet_distance(x, y) == pytest.approx(reference, rel=1e-9)
    few = rng.normal(size=(5, 400))  # 5 samples of 400-d features: rank-4 covariance, as in small FVD runs
    self_distance = frechet_distance(few, few)
    assert np.isfinite(self_distance) and abs(self_distance) < 1e-8 * np.trace(np.cov(few, rowvar=False))
