"""RoPE against a complex-number formulation; SDPA attention against a plain softmax."""

from __future__ import annotations

import importlib

import pytest
import torch

from megavg.layers import apply_rope, attention, rope_tables
from megavg.layers.rope import rope_split
from megavg.utils.errors import UserError


def complex_rope(x: torch.Tensor, grid, theta: float = 10000.0) -> torch.Tensor:
    """Slow reference: each (t, h, w) part multiplies channel pairs by exp(i * pos * theta^(-2j/part))."""
    d = x.shape[-1]
    parts, positions = [], torch.cartesian_prod(*(torch.arange(n) for n in grid))  # [S, 3] row-major
    for axis, size in enumerate(rope_split(d)):
        freqs = theta ** (-torch.arange(0, size, 2, dtype=torch.float64) / size)
        parts.append(positions[:, axis, None].double() * freqs)
    rot = torch.polar(torch.ones(1, dtype=torch.float64), torch.cat(parts, dim=1))  # [S, d/2]
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * rot[None, :, None, :]).flatten(-2).to(x.dtype)


def test_rope_matches_complex_reference():
    grid, head_dim = (3, 4, 5), 20  # split 8 / 6 / 6
    assert rope_split(head_dim) == (8, 6, 6)
    x = torch.randn(2, 60, 3, head_dim)
    out = apply_rope(x, rope_tables(head_dim, grid))
    torch.testing.assert_close(out, complex_rope(x, grid), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))  # a rotation


def test_rope_is_relative():
    """q.k after RoPE depends only on the position offset."""
    grid, d = (1, 1, 8), 12
    cos, sin = rope_tables(d, grid)
    q, k = torch.randn(1, 1, 1, d).expand(1, 8, 1, d), torch.randn(1, 1, 1, d).expand(1, 8, 1, d)
    q, k = apply_rope(q, (cos, sin)), apply_rope(k, (cos, sin))
    dots = (q[0, :, 0, None] * k[0, None, :, 0]).sum(-1)  # [8, 8]
    torch.testing.assert_close(dots[1, 3], dots[4, 6])
    torch.testing.assert_close(dots[5, 2], dots[7, 4])


def test_sdpa_attention_matches_plain_softmax():
    q, k, v = torch.randn(2, 5, 3, 8), torch.randn(2, 7, 3, 8), torch.randn(2, 7, 3, 8)
    weights = torch.einsum("bqhd,bkhd->bhqk", q, k).div(8**0.5).softmax(-1)
    expected = torch.einsum("bhqk,bkhd->bqhd", weights, v)
    torch.testing.assert_close(attention(q, k, v, "sdpa"), expected, atol=1e-6, rtol=1e-5)


def test_flash_choice_respects_its_dtypes(monkeypatch):
    """flash-attn takes fp16/bf16 only: ``auto`` sends fp32 to SDPA, an explicit ``flash`` refuses it."""
    attention_module = importlib.import_module("megavg.layers.attention")  # the module, not the function
    monkeypatch.setattr(attention_module, "resolve_attention", lambda choice: "flash")  # as on a GPU node
    assert attention_module._backend_for(torch.float32, "auto") == "sdpa"
    assert attention_module._backend_for(torch.bfloat16, "auto") == "flash"
    with pytest.raises(UserError, match="fp16/bf16"):
        attention_module._backend_for(torch.float32, "flash")
