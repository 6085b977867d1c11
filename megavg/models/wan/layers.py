"""Building blocks of the Wan-2.1 DiT: condition embeddings, attentions, feed-forward, block, output head.

Precision follows Wan: the time path (sinusoid, time MLP and projection, block and head modulation) in
float32 whatever the parameters' dtype; LayerNorms and residual updates in float32, cast back to the
activation dtype. Block linears come from :func:`megavg.layers.make_linear` (TE or torch); the embeddings,
the I2V image key/value projections (257 CLIP tokens, not FP8-friendly) and the head stay torch linears.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from megavg.layers import (
    Fp32LayerNorm,
    apply_rope,
    attention,
    make_layer_norm_linear,
    make_linear,
    make_rms_norm,
)
from megavg.models.wan.args import Args


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[B] timesteps -> [B, dim] float32 (cos half first, then sin), computed in float32 as diffusers does.

    Wan's original code computes the angles in float64 (at t ~ 1000 a float32 angle is off by ~6e-5 rad);
    the DC-VideoGen transformers are diffusers models run by a diffusers pipeline, so megavg follows
    diffusers here and stays exact to it (tests compare at 1e-5).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class Fp32Linear(nn.Linear):
    """An ``nn.Linear`` that computes in float32 whatever its parameters' dtype (bf16 under DeepSpeed's bf16
    ZeRO-3, fp32 in an exported runner): the time path's precision. Still an ``nn.Linear``, so peft's LoRA
    wraps it and adds its update on top of this float32 output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias)


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``device``; a no-op on meta tensors (the planner's traces), for which torch
    has no autocast (``torch.autocast("meta")`` raises "unsupported scalarType")."""
    return contextlib.nullcontext() if device.type == "meta" else torch.autocast(device.type, enabled=False)


class TimeEmbedding(nn.Module):
    """Timestep -> (embedding [B, dim] for the head, projection [B, 6, dim] for the blocks' modulation),
    both float32: the whole time path runs in float32 in training and in the runner, as in Wan (its
    ``amp.autocast(dtype=float32)`` regions), whatever the activation dtype."""

    def __init__(self, freq_dim: int, dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = Fp32Linear(freq_dim, dim)
        self.linear_2 = Fp32Linear(dim, dim)
        self.proj = Fp32Linear(dim, 6 * dim)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``t`` [B] (one timestep per sample) or [B, L] (Wan 2.2 TI2V: one per token) ->
        (emb [B, dim] or [B, L, dim], proj [B, 6, dim] or [B, L, 6, dim])."""
        with _autocast_off(t.device):  # a caller's autocast must not lower it
            freq = sinusoidal_embedding(t.flatten(), self.freq_dim).unflatten(0, t.shape)  # [*t, freq_dim]
            emb = self.linear_2(F.silu(self.linear_1(freq))).float()
            return emb, self.proj(F.silu(emb)).float().unflatten(-1, (6, -1))  # [*t, 6, dim]


class TextEmbedding(nn.Module):
    """Text encoder states [B, L, text_dim] -> [B, L, dim] (Linear, tanh-GELU, Linear)."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(text_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(text), approximate="tanh"))


class ImageEmbedding(nn.Module):
    """CLIP image tokens [B, L', image_dim] -> [B, L', dim] (LayerNorm, MLP with GELU, LayerNorm)."""

    def __init__(self, image_dim: int, dim: int):
        super().__init__()
        self.norm_in = Fp32LayerNorm(image_dim)
        self.linear_1 = nn.Linear(image_dim, image_dim)
        self.linear_2 = nn.Linear(image_dim, dim)
        self.norm_out = Fp32LayerNorm(dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.norm_in(image).type_as(image)
        x = self.linear_2(F.gelu(self.linear_1(x)))
        return self.norm_out(x).type_as(image)


class AttentionCore(nn.Module):
    """The attention entry point: RoPE (if given) on q and k, then softmax attention.

    q/k/v are [B, S_pad, H, D] holding the whole sequence; ``rope`` holds (cos, sin) tables for its S
    global positions. Tokens past S are padding: they are dropped before attending (so never act as keys)
    and get zero output. Sequence parallelism wraps this module (:mod:`megavg.models.wan.parallelize`).
    """

    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend

    def forward(self, q, k, v, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        length, padded = rope[0].shape[0], q.shape[1]  # tokens beyond the RoPE table are padding
        q, k, v = q[:, :length], k[:, :length], v[:, :length]
        out = attention(apply_rope(q, rope), apply_rope(k, rope), v, self.backend)
        if padded == length:
            return out  # no padding: F.pad would still copy
        return F.pad(out, (0, 0, 0, 0, 0, padded - length))  # padding rows get zeros


class SelfAttention(nn.Module):
    """Self-attention with RMS q/k norm across heads and 3-D RoPE."""

    def __init__(self, args: Args):
        super().__init__()
        dim, backend = args.dim, args.layers.linear
        self.num_heads = args.num_heads
        self.q, self.k, self.v, self.o = (make_linear(dim, dim, backend) for _ in range(4))
        self.norm_q = make_rms_norm(dim, args.eps, backend)
        self.norm_k = make_rms_norm(dim, args.eps, backend)
        self.core = AttentionCore(args.layers.attention)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)  # [B, S, H, D]
        k = self.norm_k(self.k(x)).unflatten(-1, heads)
        v = self.v(x).unflatten(-1, heads)
        return self.o(self.core(q, k, v, rope).flatten(-2).type_as(x))


class CrossAttention(nn.Module):
    """Cross-attention of the video tokens to text, plus (I2V) to CLIP image tokens via added k/v.

    With ``cross_attn_norm`` (all Wan-2.1 models) the block's LayerNorm before cross-attention feeds only
    the query projection, so the two are one layer, ``q`` (fused ``te.LayerNormLinear`` on GPU).
    """

    def __init__(self, args: Args):
        super().__init__()
        dim, backend = args.dim, args.layers.linear
        self.num_heads = args.num_heads
        self.backend = args.layers.attention
        if args.cross_attn_norm:
            self.q = make_layer_norm_linear(dim, dim, args.eps, backend)
        else:
            self.q = make_linear(dim, dim, backend)
        self.k, self.v, self.o = (make_linear(dim, dim, backend) for _ in range(3))
        self.norm_q = make_rms_norm(dim, args.eps, backend)
        self.norm_k = make_rms_norm(dim, args.eps, backend)
        if args.is_i2v:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = make_rms_norm(dim, args.eps, backend)

    def project(self, text: torch.Tensor, image: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Keys and values of the context: (k, v) [B, L, H, D] for text, plus (k_img, v_img) for I2V.

        They depend only on the (embedded) text and image, not on the latents or the timestep, so a
        sampler computes them once per prompt (:meth:`Model.encode_context`) and passes them back in."""
        heads = (self.num_heads, -1)
        kv = (self.norm_k(self.k(text)).unflatten(-1, heads), self.v(text).unflatten(-1, heads))
        if image is None:
            return kv
        return (
            *kv,
            self.norm_k_img(self.k_img(image)).unflatten(-1, heads),
            self.v_img(image).unflatten(-1, heads),
        )

    def forward(self, x: torch.Tensor, text, image: torch.Tensor | None, kv=None) -> torch.Tensor:
        """x [B, S, dim]; text [B, L, dim], image [B, L', dim] or None; or their ``kv`` (:meth:`project`)."""
        kv = self.project(text, image) if kv is None else kv
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))  # [B, S, H, D]
        out = attention(q, kv[0], kv[1], self.backend)
        if len(kv) == 4:
            out = out + attention(q, kv[2], kv[3], self.backend)
        return self.o(out.flatten(-2).type_as(x))


class FeedForward(nn.Module):
    def __init__(self, args: Args):
        super().__init__()
        self.fc1 = make_linear(args.dim, args.ffn_dim, args.layers.linear)
        self.fc2 = make_linear(args.ffn_dim, args.dim, args.layers.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class WanBlock(nn.Module):
    """adaLN-modulated self-attention, cross-attention and FFN (six modulation vectors per block)."""

    def __init__(self, args: Args):
        super().__init__()
        self.norm_self = Fp32LayerNorm(args.dim, args.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(args)
        self.cross_attn = CrossAttention(args)
        self.norm_ffn = Fp32LayerNorm(args.dim, args.eps, elementwise_affine=False)
        self.ffn = FeedForward(args)
        self.modulation = nn.Parameter(torch.randn(1, 6, args.dim) / args.dim**0.5)

    def modulate(self, time_proj: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Six float32 vectors (time path): attn shift, scale, gate; FFN shift, scale, gate. Each is
        [B, 1, dim] for ``time_proj`` [B, 6, dim], or [B, S, dim] for per-token [B, S, 6, dim]."""
        if time_proj.ndim == 4:  # per token (Wan 2.2 TI2V)
            return tuple(m.squeeze(2) for m in (self.modulation.float() + time_proj.float()).chunk(6, dim=2))
        return (self.modulation.float() + time_proj.float()).chunk(6, dim=1)

    def modulated_input(self, x: torch.Tensor, time_proj: torch.Tensor) -> torch.Tensor:
        """The timestep-modulated input of the self-attention (what TeaCache watches)."""
        shift, scale = self.modulate(time_proj)[:2]
        return (self.norm_self(x) * (1 + scale) + shift).type_as(x)

    def forward(self, x, text, image, time_proj, rope, kv=None):
        """x [B, S, dim]; text [B, L, dim]; image [B, L', dim] or None; time_proj [B, 6, dim];
        ``kv``: this block's precomputed cross-attention keys/values (then text and image are unused)."""
        shift, scale, gate, ffn_shift, ffn_scale, ffn_gate = self.modulate(time_proj)
        h = (self.norm_self(x) * (1 + scale) + shift).type_as(x)
        x = (x.float() + self.self_attn(h, rope) * gate).type_as(x)
        x = x + self.cross_attn(x, text, image, kv)  # its query projection holds the cross-attention norm
        h = (self.norm_ffn(x) * (1 + ffn_scale) + ffn_shift).type_as(x)
        return (x.float() + self.ffn(h).float() * ffn_gate).type_as(x)


class Head(nn.Module):
    """Final modulated LayerNorm and linear to ``out_channels * prod(patch)`` values per token."""

    def __init__(self, args: Args):
        super().__init__()
        self.norm = Fp32LayerNorm(args.dim, args.eps, elementwise_affine=False)
        self.linear = nn.Linear(args.dim, args.out_channels * math.prod(args.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, args.dim) / args.dim**0.5)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        """x [B, S, dim]; time_emb [B, dim], or [B, S, dim] per token (Wan 2.2 TI2V)."""
        if time_emb.ndim == 3:  # per token: [B, S, 2, dim] -> [B, S, dim] each
            shift, scale = (self.modulation.float() + time_emb.float()[:, :, None]).unbind(2)
        else:
            modulation = self.modulation.float() + time_emb.float()[:, None]  # [B, 2, dim], float32
            shift, scale = modulation.chunk(2, dim=1)  # [B, 1, dim] each
        return self.linear((self.norm(x) * (1 + scale) + shift).type_as(x))
