"""Reconstruction metrics the video-autoencoder literature reports: PSNR and SSIM, per clip.

Videos are B,3,T,H,W in [-1, 1] (data range 2); the reconstruction is clamped to that range first.
SSIM follows Wang et al. 2004 as commonly reported: Gaussian window 11x11, sigma 1.5, K1 = 0.01,
K2 = 0.03, population (not sample) statistics, only window positions fully inside the frame, computed
per channel and per frame and averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DATA_RANGE = 2.0


def psnr(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each clip ([B]) over all its pixels and frames."""
    err = (recon.float().clamp(-1, 1) - target.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(DATA_RANGE**2 / err.clamp_min(1e-12))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _blur(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of N,1,H,W images."""
    x = F.conv2d(x, w.view(1, 1, -1, 1))
    return F.conv2d(x, w.view(1, 1, 1, -1))


def ssim(recon: torch.Tensor, target: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of each clip ([B]) over frames and channels; frames must be at least ``size`` pixels."""
    B, C, T, H, W = target.shape
    if min(H, W) < size:
        raise ValueError(f"SSIM needs frames of at least {size}x{size} pixels, got {H}x{W}")
    w = gaussian_window(size, sigma).to(target.device)
    # B,C,T,H,W -> B*C*T,1,H,W (each channel of each frame is one image); float64 for the variances
    x = recon.double().clamp(-1, 1).reshape(-1, 1, H, W)
    y = target.double().reshape(-1, 1, H, W)
    mx, my = _blur(x, w), _blur(y, w)
    vx = _blur(x * x, w) - mx * mx
    vy = _blur(y * y, w) - my * my
    cov = _blur(x * y, w) - mx * my
    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.view(B, -1).mean(dim=1).float()
