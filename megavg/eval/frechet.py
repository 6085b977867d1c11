"""Fréchet distance between two Gaussians fitted to feature sets (FID/FVD).

d² = ||μ_a − μ_b||² + Tr(Σ_a) + Tr(Σ_b) − 2·Tr((Σ_a^½ Σ_b Σ_a^½)^½)

The last trace equals Tr((Σ_a Σ_b)^½) (the two matrices are similar) but is computed from symmetric
positive semi-definite matrices with ``numpy.linalg.eigh`` only: Σ_a^½ from Σ_a's eigenvectors, then the
eigenvalues of Σ_a^½ Σ_b Σ_a^½. Eigenvalues at round-off level (below ``max · D · eps``, negative ones
included) are set to 0, so near-singular covariances (fewer samples than feature dimensions, the usual
case in FVD) give a finite, real result without the small imaginary parts ``scipy.linalg.sqrtm`` of the
non-symmetric product produces. Everything runs in float64.
"""

from __future__ import annotations

import numpy as np


def moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of ``features`` [N, D], N >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _clip_null(values: np.ndarray) -> np.ndarray:
    """Eigenvalues with those below round-off (``max * dim * eps``, numpy's matrix-rank tolerance) set to
    0: square roots would turn round-off of 1e-16 into 1e-8 per null direction."""
    tol = max(values.max(initial=0.0), 0.0) * len(values) * np.finfo(np.float64).eps
    return np.where(values > tol, values, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (round-off eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(_clip_null(values))) @ vectors.T


def frechet_from_moments(mu_a, sigma_a, mu_b, sigma_b) -> float:
    """Fréchet distance of N(mu_a, sigma_a) and N(mu_b, sigma_b) (squared, as FID/FVD report it)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    root_a = _psd_sqrt(sigma_a)
    cross = np.linalg.eigvalsh(root_a @ sigma_b @ root_a)  # eigenvalues of Σa^½ Σb Σa^½ (symmetric)
    trace_cross = np.sqrt(_clip_null(cross)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_cross)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to feature arrays ``a`` [N, D] and ``b`` [M, D]."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature arrays must be [N, D] with the same D, got {a.shape} and {b.shape}")
    return frechet_from_moments(*moments(a), *moments(b))
