"""Autoencoder measurements of the reproduction: latent scaling factor and held-out reconstruction PSNR.

scale = measure_scaling(model, clips)      # 1 / std of the unscaled latents
write_scaling(folder, scale)               # into the model folder's config.json
psnr = heldout_psnr(model, clips)          # mean over clips, dB, [-1, 1] range as megavg's metric
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from megavg.metrics import video as video_metrics
from megavg.models import registry


def to_model(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> [1, 3, T, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0).unsqueeze(0)


def write_scaling(folder: Path, scale: float) -> None:
    """Set ``args.scaling_factor`` in a model folder's config.json (atomically)."""
    path = Path(folder) / registry.CONFIG_NAME
    config = json.loads(path.read_text())
    config["args"]["scaling_factor"] = scale
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(path)


@torch.no_grad()
def heldout_psnr(model: torch.nn.Module, clips: list[np.ndarray]) -> float:
    """Mean PSNR (dB) of encode -> decode over ``clips``."""
    values = []
    for clip in clips:
        video = to_model(clip)
        recon = model.decode(model.encode(video)).clamp(-1, 1)
        values.append(float(video_metrics.psnr(recon, video).mean()))
    return float(np.mean(values))
