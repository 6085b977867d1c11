"""DC-AE-V building blocks: the chunk-causal 3-D conv, RMSNorm, residual / resampling blocks.

Chunk-causal temporal padding (DESIGN.md §3). A conv with temporal kernel ``kT`` (pad ``p = kT // 2``) and
chunk length ``L`` splits its input's T frames into chunks of ``L`` (the last chunk may be shorter) and
convolves each chunk padded on the left with the last ``p`` frames of the previous chunk's input and on
the right with ``p`` zero frames. Information thus flows both ways inside a chunk and only forwards
across chunks. The left pad of the *first* chunk comes from ``left_context`` when set (streaming cache or
sequence-parallel halo), else zeros. A shorter last chunk is treated exactly like a full one (left
context, zero right pad): every length has one causal behaviour, there is no non-causal fallback.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _onednn() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


# (last p frames of this call's input) -> left pad of its first chunk, or None for zeros
LeftContext = Callable[[torch.Tensor], "torch.Tensor | None"]


class ChunkCausalConv3d(nn.Conv3d):
    """3-D conv with spatial zero padding and chunk-causal temporal padding. Keys: ``weight``, ``bias``."""

    def __init__(self, cin: int, cout: int, kernel_s: int, kernel_t: int, chunk: int, bias: bool = True):
        ks = (kernel_t, kernel_s, kernel_s)
        super().__init__(cin, cout, ks, padding=(0, kernel_s // 2, kernel_s // 2), bias=bias)
        self.chunk = chunk
        self.pad_t = kernel_t // 2
        self.left_context: LeftContext | None = None

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """The conv with temporal padding 0. On CPU, torch runs batch-1 3-D convs with its slow reference
        kernel; oneDNN computes the same conv ~5x faster, so batch-1 float32 CPU inputs go to it."""
        if x.shape[0] == 1 and x.device.type == "cpu" and x.dtype == torch.float32 and _onednn():
            w, b = self.weight, self.bias
            return torch.mkldnn_convolution(x, w, b, self.padding, self.stride, self.dilation, self.groups)
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad_t
        if p == 0:
            return self._conv(x)
        first_left = self.left_context(x[:, :, -p:]) if self.left_context is not None else None
        if first_left is None:
            first_left = x.new_zeros(*x.shape[:2], p, *x.shape[3:])
        return chunk_causal_conv(x, first_left, self.chunk, self._conv)


def chunk_causal_conv(
    x: torch.Tensor, first_left: torch.Tensor, chunk: int, conv: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Run ``conv`` (temporal padding 0) over chunks of ``x`` with chunk-causal padding, chunks batched."""
    B, C, T, H, W = x.shape
    p = first_left.shape[2]
    n_full, rest = divmod(T, chunk)
    outputs = []
    if n_full:
        full = x[:, :, : n_full * chunk].reshape(B, C, n_full, chunk, H, W)
        lefts = torch.cat([first_left.unsqueeze(2), full[:, :, :-1, chunk - p :]], dim=2)  # B,C,n,p,H,W
        rights = x.new_zeros(B, C, n_full, p, H, W)
        padded = torch.cat([lefts, full, rights], dim=3)  # B,C,n,L+2p,H,W
        padded = padded.transpose(1, 2).reshape(B * n_full, C, chunk + 2 * p, H, W)
        y = conv(padded)  # B*n, O, L, h, w
        y = y.reshape(B, n_full, *y.shape[1:]).transpose(1, 2)  # B,O,n,L,h,w
        outputs.append(y.reshape(B, y.shape[1], n_full * chunk, *y.shape[4:]))
    if rest:
        left = x[:, :, n_full * chunk - p : n_full * chunk] if n_full else first_left
        tail = torch.cat([left, x[:, :, n_full * chunk :], x.new_zeros(B, C, p, H, W)], dim=2)
        outputs.append(conv(tail))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)


class RMSNorm3d(nn.Module):
    """RMS normalisation over channels (dim 1) with weight and bias; computed in float32."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.square().mean(dim=1, keepdim=True) + self.eps)
        shape = (1, -1, 1, 1, 1)
        return (y * self.weight.float().view(shape) + self.bias.float().view(shape)).to(x.dtype)


def pixel_unshuffle_3d(x: torch.Tensor, s: int, t: int) -> torch.Tensor:
    """(B,C,T,H,W) -> (B, C*t*s*s, T/t, H/s, W/s); channel order (C, t, s_h, s_w)."""
    B, C, T, H, W = x.shape
    x = x.reshape(B, C, T // t, t, H // s, s, W // s, s)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(B, C * t * s * s, T // t, H // s, W // s)


def pixel_shuffle_3d(x: torch.Tensor, s: int, t: int) -> torch.Tensor:
    """Exact inverse of :func:`pixel_unshuffle_3d`: (B, C*t*s*s, T, H, W) -> (B, C, T*t, H*s, W*s)."""
    B, C, T, H, W = x.shape
    c = C // (t * s * s)
    x = x.reshape(B, c, t, s, s, T, H, W)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(B, c, T * t, H * s, W * s)


class ResBlock(nn.Module):
    """x + RMSNorm(conv2(SiLU(conv1(x)))): conv1 with bias, conv2 without."""

    def __init__(self, channels: int, kernel_s: int, kernel_t: int, chunk: int, eps: float):
        super().__init__()
        self.conv1 = ChunkCausalConv3d(channels, channels, kernel_s, kernel_t, chunk, bias=True)
        self.conv2 = ChunkCausalConv3d(channels, channels, kernel_s, kernel_t, chunk, bias=False)
        self.norm = RMSNorm3d(channels, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv2(F.silu(self.conv1(x))))


class ConvPixelUnshuffle(nn.Module):
    """conv (cin -> cout/(s²t)) then 3-D pixel-unshuffle; with ``shortcut``, plus the parameter-free
    shortcut: pixel-unshuffle the input and average consecutive channel groups down to ``cout``."""

    def __init__(self, cin: int, cout: int, s: int, t: int, kernel_s: int, kernel_t: int, chunk: int,
                 shortcut: bool):  # fmt: skip
        super().__init__()
        self.s, self.t, self.cout, self.shortcut = s, t, cout, shortcut
        self.conv = ChunkCausalConv3d(cin, cout // (s * s * t), kernel_s, kernel_t, chunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = pixel_unshuffle_3d(self.conv(x), self.s, self.t)
        if self.shortcut:
            short = pixel_unshuffle_3d(x, self.s, self.t)
            B, C, T, H, W = short.shape
            y = y + short.view(B, self.cout, C // self.cout, T, H, W).mean(dim=2)
        return y


class ConvPixelShuffle(nn.Module):
    """conv (cin -> cout·s²t) then 3-D pixel-shuffle; with ``shortcut``, plus the parameter-free
    shortcut: repeat each input channel (repeat_interleave) to cout·s²t channels and pixel-shuffle."""

    def __init__(self, cin: int, cout: int, s: int, t: int, kernel_s: int, kernel_t: int, chunk: int,
                 shortcut: bool):  # fmt: skip
        super().__init__()
        self.s, self.t, self.shortcut = s, t, shortcut
        self.repeats = cout * s * s * t // cin
        self.conv = ChunkCausalConv3d(cin, cout * s * s * t, kernel_s, kernel_t, chunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = pixel_shuffle_3d(self.conv(x), self.s, self.t)
        if self.shortcut:
            y = y + pixel_shuffle_3d(x.repeat_interleave(self.repeats, dim=1), self.s, self.t)
        return y


class DecoderHead(nn.Module):
    """Decoder project-out: RMSNorm -> SiLU -> conv + pixel-shuffle to the output channels."""

    def __init__(self, cin: int, cout: int, s: int, t: int, kernel_s: int, kernel_t: int, chunk: int,
                 eps: float):  # fmt: skip
        super().__init__()
        self.norm = RMSNorm3d(cin, eps)
        self.conv = ConvPixelShuffle(cin, cout, s, t, kernel_s, kernel_t, chunk, shortcut=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.silu(self.norm(x)))
