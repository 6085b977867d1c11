"""Random Wan DiT inputs for tests (no diffusers import, so distributed workers start fast)."""

from __future__ import annotations

import torch

DIFFUSERS_TEXT_LEN = 512  # diffusers' I2V attention splits text/image at a hard-coded 512 text tokens


def inputs(args, batch: int = 2, grid=(2, 2, 3), text_len: int = 7, image_len: int = 5, seed: int = 1):
    """Random (latents, timestep, text, image) for ``args``; grid is in tokens (t, h, w)."""
    gen = torch.Generator().manual_seed(seed)
    size = [g * p for g, p in zip(grid, args.patch_size)]
    latents = torch.randn(batch, args.in_channels, *size, generator=gen)
    timestep = torch.tensor([999.0, 321.0][:batch])
    if args.image_dim:
        text_len = DIFFUSERS_TEXT_LEN
    text = torch.randn(batch, text_len, args.text_dim, generator=gen)
    image = torch.randn(batch, image_len, args.image_dim, generator=gen) if args.image_dim else None
    return latents, timestep, text, image
