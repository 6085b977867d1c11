"""3-D rotary position embedding over a (t, h, w) token grid, as used by Wan.

The head dimension d is split into a temporal part d - 4*(d//6) and two spatial parts 2*(d//6); each part
rotates consecutive channel pairs (2i, 2i+1) by position * theta^(-2i/part). Tables are built for global
positions of the whole grid, so a sequence-parallel caller can apply them after gathering the sequence.
"""

from __future__ import annotations

import functools

import torch


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Channels of the head given to (t, h, w)."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _angles(dim: int, positions: int, theta: float) -> torch.Tensor:
    """[positions, dim // 2] rotation angles in float64."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim)
    return torch.outer(torch.arange(positions, dtype=torch.float64, device="cpu"), inv_freq)


@functools.lru_cache(maxsize=16)
def rope_tables(
    head_dim: int, grid: tuple[int, int, int], theta: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) for every token of a row-major (t, h, w) grid, each [T*H*W, head_dim // 2] float32.

    Cached per (head_dim, grid, theta, device): training reuses a few bucket shapes. Treat as read-only.
    """
    parts = []
    for axis, (dim, size) in enumerate(zip(rope_split(head_dim), grid)):
        shape = [1, 1, 1, dim // 2]
        shape[axis] = size
        parts.append(_angles(dim, size, theta).view(shape).expand(*grid, dim // 2))
    angles = torch.cat(parts, dim=-1).reshape(-1, head_dim // 2)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate channel pairs of ``x`` [B, S, H, D] by the (cos, sin) tables [S, D/2]; in float32.

    Each pair (x_2i, x_2i+1) is one complex number times cos + i sin: one complex multiply over a
    contiguous view (the same products and sums as the real-valued formula, bitwise, on CPU). The
    real-valued form on strided even/odd slices ran ~18x slower on CPU (strided, unvectorised loops)."""
    rotation = torch.complex(rope[0], rope[1])[None, :, None, :]  # [1, S, 1, D/2]
    x32 = x.float()
    if x32.stride(-1) != 1 or any(stride % 2 for stride in x32.stride()[:-1]):
        x32 = x32.contiguous()  # view_as_complex needs unit-stride pairs
    pairs = torch.view_as_complex(x32.unflatten(-1, (-1, 2)))  # [B, S, H, D/2] complex64
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)
