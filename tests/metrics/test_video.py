"""PSNR and SSIM against independent references (numpy formula; scipy's Gaussian filter, which is how
scikit-image computes SSIM: sigma 1.5, truncate 3.5 -> 11 taps, border of 5 cropped)."""

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from megavg.metrics.video import psnr, ssim


def scipy_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two 2-D images with data range 2, Wang et al.'s constants, population statistics."""
    blur = lambda v: gaussian_filter(v, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731
    mx, my = blur(a), blur(b)
    vx, vy, cov = blur(a * a) - mx**2, blur(b * b) - my**2, blur(a * b) - mx * my
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    s = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


def test_ssim_matches_scipy_reference():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 2, 24, 30, generator=gen) * 2 - 1
    recon = (target + 0.2 * torch.randn(target.shape, generator=gen)).clamp(-1, 1)
    got = ssim(recon, target)
    for b in range(2):
        ref = np.mean(
            [
                scipy_ssim(recon[b, c, t].double().numpy(), target[b, c, t].double().numpy())
                for c in range(3)
                for t in range(2)
            ]
        )
        assert abs(got[b].item() - ref) < 1e-5, (got[b].item(), ref)
    torch.testing.assert_close(ssim(target, target), torch.ones(2))


def test_psnr_formula():
    target = torch.zeros(1, 3, 2, 4, 4)
    recon = torch.full_like(target, 0.1)
    assert abs(psnr(recon, target).item() - 10 * np.log10(4 / 0.01)) < 1e-4
    assert abs(psnr(torch.full_like(target, 5.0), target).item() - 10 * np.log10(4)) < 1e-4  # clamped: MSE 1
