"""Spatial tiling for very large frames: encode/decode overlapping tiles and blend the overlaps.

Each tile runs through the full network; where tiles overlap, outputs are averaged with weights that
ramp linearly from 0 at a tile's inner edge to 1 across the overlap (image borders keep weight 1), so
seams fade out. The result approximates the untiled pass (exact when one tile covers the frame); the
difference comes from tile edges seeing zero padding instead of their neighbours.
"""

from __future__ import annotations

import torch

from megavg.models.dcaev.model import Model


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def _ramp(length: int, ramp: int, rise: bool, fall: bool, like: torch.Tensor) -> torch.Tensor:
    w = torch.ones(length, dtype=torch.float32, device=like.device)
    if ramp > 0:
        steps = (torch.arange(ramp, dtype=torch.float32, device=like.device) + 1) / (ramp + 1)
        if rise:
            w[:ramp] = torch.minimum(w[:ramp], steps)
        if fall:
            w[-ramp:] = torch.minimum(w[-ramp:], steps.flip(0))
    return w


def _tiled(fn, x: torch.Tensor, tile: int, overlap: int, scale_num: int, scale_den: int) -> torch.Tensor:
    """Run ``fn`` on overlapping spatial tiles of ``x`` (size ``tile``, overlap ``overlap`` in input
    pixels) whose outputs are ``scale_num/scale_den`` times larger; blend them into one output."""
    H, W = x.shape[-2:]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile {tile}")
    rows, cols = _starts(H, tile, stride), _starts(W, tile, stride)
    total = weight = None
    ramp = overlap * scale_num // scale_den
    for i, y0 in enumerate(rows):
        for j, x0 in enumerate(cols):
            out = fn(x[..., y0 : y0 + tile, x0 : x0 + tile])
            if total is None:
                shape = (*out.shape[:-2], H * scale_num // scale_den, W * scale_num // scale_den)
                total = out.new_zeros(shape, dtype=torch.float32)
                weight = out.new_zeros(shape[-2:], dtype=torch.float32)
            h, w = out.shape[-2:]
            wy = _ramp(h, ramp, rise=i > 0, fall=i < len(rows) - 1, like=out)
            wx = _ramp(w, ramp, rise=j > 0, fall=j < len(cols) - 1, like=out)
            mask = wy[:, None] * wx[None, :]
            oy, ox = y0 * scale_num // scale_den, x0 * scale_num // scale_den
            total[..., oy : oy + h, ox : ox + w] += out.float() * mask
            weight[oy : oy + h, ox : ox + w] += mask
    return (total / weight).to(x.dtype)


def tiled_map(fn, x: torch.Tensor, tile: int, overlap: int, scale_num: int, scale_den: int) -> torch.Tensor:
    """Public form of the tile-and-blend loop: ``fn`` is called once per tile, rows then columns, with
    outputs ``scale_num / scale_den`` times larger than its input (the runner streams each tile)."""
    return _tiled(fn, x, tile, overlap, scale_num, scale_den)


def tiled_encode(model: Model, x: torch.Tensor, tile: int = 512, overlap: int = 128) -> torch.Tensor:
    """``model.encode`` over spatial tiles of ``tile`` pixels overlapping by ``overlap`` (multiples of the
    spatial compression)."""
    s = model.spatial_compression
    if tile % s or overlap % s:
        raise ValueError(f"tile {tile} and overlap {overlap} must be multiples of {s}")
    return _tiled(model.encoder, model.pad_input(x), tile, overlap, 1, s)


def tiled_decode(model: Model, z: torch.Tensor, tile: int = 16, overlap: int = 4) -> torch.Tensor:
    """``model.decode`` over spatial tiles of ``tile`` latent pixels overlapping by ``overlap``."""
    return _tiled(model.decoder, z, tile, overlap, model.spatial_compression, 1)
