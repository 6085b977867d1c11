"""frechet_distance against the closed form for commuting covariances, and against scipy's sqrtm formula."""

import numpy as np
import pytest
import scipy.linalg

from megavg.eval import frechet_distance
from megavg.eval.frechet import frechet_from_moments

EPS = np.finfo(np.float64).eps


def roundoff(dim: int, scale: float, smallest: float = 1.0) -> float:
    """Float64 error bound for frechet_from_moments of ``dim``-d Gaussians whose traces and squared mean
    gap sum to ``scale``: each eigenvalue eigh returns is within dim·eps·|A| of the exact one (backward
    stability, LAPACK's n·eps bound; |A| <= scale), a square root multiplies that error by at most
    1 / (2 sqrt(smallest)) for eigenvalues >= ``smallest``; dim eigenvalues, a factor 2 on the cross term."""
    return dim**2 * EPS * scale / min(1.0, np.sqrt(smallest))


def scale(m1, s1, m2, s2) -> float:
    return float(np.trace(s1) + np.trace(s2) + np.sum((m1 - m2) ** 2))


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
    smallest = np.linalg.eigvalsh(s1).min() * np.linalg.eigvalsh(s2).min()  # of S1^1/2 S2 S1^1/2
    tol = roundoff(16, scale(m1, s1, m2, s2), smallest)
    assert frechet_from_moments(m1, s1, m2, s2) == pytest.approx(closed, rel=0, abs=tol)
    # diagonal covariances: the textbook case ||m1-m2||^2 + sum (sqrt(s1) - sqrt(s2))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = 3 * 1.0**2 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0.5) ** 2
    got = frechet_from_moments(np.zeros(3), np.diag(a), np.ones(3), np.diag(b))
    tol = roundoff(3, scale(np.zeros(3), np.diag(a), np.ones(3), np.diag(b)), smallest=min(a * b))
    assert got == pytest.approx(expected, rel=0, abs=tol)


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
    # scipy's root X has residual E = X² - A (A = cx cy = V diag(μ²) V⁻¹, similar to the symmetric
    # cx^½ cy cx^½, so κ(V) <= κ(cx^½)); the exact root is X + δX with X δX + δX X = -E, whence
    # |tr δX| <= D κ(V) |E| / (2 μ_min), doubled in the distance; ours is within roundoff()
    residual = np.linalg.norm(root @ root - cx @ cy, 2)
    mu_min = np.sqrt(np.linalg.eigvals(cx @ cy).real.min())
    kappa = np.sqrt(np.linalg.cond(cx))
    tol = 20 * kappa * residual / mu_min + roundoff(20, scale(mx, cx, my, cy), mu_min**2)
    assert frechet_distance(x, y) == pytest.approx(reference, rel=0, abs=tol)
    few = rng.normal(size=(5, 400))  # 5 samples of 400-d features: rank-4 covariance, as in small FVD runs
    self_distance = frechet_distance(few, few)
    assert np.isfinite(self_distance) and abs(self_distance) < 1e-8 * np.trace(np.cov(few, rowvar=False))
