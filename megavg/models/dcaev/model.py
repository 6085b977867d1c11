"""DC-AE-V: deterministic, fully convolutional, chunk-causal video autoencoder (DESIGN.md §2-3).

Layout B,C,T,H,W; video in [-1, 1]. ``encode`` returns the latent *before* the scaling factor.

Lengths and sizes. ``encode`` repeats the last frame until T is a multiple of the temporal compression
(4 for the presets) and pads H, W (edge replicate) to multiples of the spatial compression, logging once;
``forward`` trims and crops the reconstruction back to the input's size. A clip whose length is not a
multiple of the chunk length simply ends with a shorter chunk, which is padded like every other chunk
(left context, zero right pad): outputs never depend on later chunks, whatever the length.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from megavg.models.base import MegavgModel
from megavg.models.dcaev.args import (
    CONV_BLOCK,
    Args,
    decoder_plan,
    decoder_resamplers,
    encoder_plan,
    encoder_resamplers,
    parse_block,
    validate,
)
from megavg.models.dcaev.blocks import (
    ChunkCausalConv3d,
    ConvPixelShuffle,
    ConvPixelUnshuffle,
    DecoderHead,
    ResBlock,
)
from megavg.utils.logging import get_logger

log = get_logger(__name__)


class EncoderStage(nn.Module):
    """Residual blocks, then (except for the last stage) a downsample block to the next width."""

    def __init__(self, plan, eps: float):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBlock(plan.width, b.kernel_s, b.kernel_t, b.chunk, eps) for b in plan.blocks
        )
        r = plan.resample
        self.downsample = None
        if r is not None:
            self.downsample = ConvPixelUnshuffle(
                plan.resample_in, plan.resample_out, r.factor_s, r.factor_t, r.kernel_s, r.kernel_t, r.chunk,
                shortcut=True,
            )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class DecoderStage(nn.Module):
    """(Except for the last stage) an upsample block from the next width, then residual blocks."""

    def __init__(self, plan, eps: float):
        super().__init__()
        r = plan.resample
        self.upsample = None
        if r is not None:
            self.upsample = ConvPixelShuffle(
                plan.resample_in, plan.resample_out, r.factor_s, r.factor_t, r.kernel_s, r.kernel_t, r.chunk,
                shortcut=True,
            )  # fmt: skip
        self.blocks = nn.ModuleList(
            ResBlock(plan.width, b.kernel_s, b.kernel_t, b.chunk, eps) for b in plan.blocks
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        for block in self.blocks:
            x = block(x)
        return x


def _first_width(width_list, depth_list) -> int:
    return width_list[0] if depth_list[0] > 0 else width_list[1]


class Encoder(nn.Module):
    """project_in (conv + pixel-unshuffle) -> stages -> project_out conv to the latent channels."""

    def __init__(self, args: Args):
        super().__init__()
        enc = args.encoder
        p = encoder_resamplers(args)[0]
        width = _first_width(enc.width_list, enc.depth_list)
        self.project_in = ConvPixelUnshuffle(
            args.in_channels, width, p.factor_s, p.factor_t, p.kernel_s, p.kernel_t, p.chunk, shortcut=False
        )
        self.stages = nn.ModuleList(EncoderStage(plan, args.norm_eps) for plan in encoder_plan(args))
        o = parse_block(enc.project_out_block_type, (CONV_BLOCK,), "encoder.project_out_block_type")
        self.project_out = ChunkCausalConv3d(enc.width_list[-1], args.latent_channels, o.kernel_s, o.kernel_t,
                                             o.chunk)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project_in(x)
        for stage in self.stages:
            x = stage(x)
        return self.project_out(x)


class Decoder(nn.Module):
    """project_in conv from the latent -> stages (last to first) -> norm, SiLU, conv + pixel-shuffle."""

    def __init__(self, args: Args):
        super().__init__()
        dec = args.decoder
        i = parse_block(dec.project_in_block_type, (CONV_BLOCK,), "decoder.project_in_block_type")
        self.project_in = ChunkCausalConv3d(args.latent_channels, dec.width_list[-1], i.kernel_s, i.kernel_t,
                                            i.chunk)  # fmt: skip
        self.stages = nn.ModuleList(DecoderStage(plan, args.norm_eps) for plan in decoder_plan(args))
        o = decoder_resamplers(args)[-1]
        width = _first_width(dec.width_list, dec.depth_list)
        self.project_out = DecoderHead(
            width, args.in_channels, o.factor_s, o.factor_t, o.kernel_s, o.kernel_t, o.chunk, args.norm_eps
        )

    def modules_in_order(self):
        """Submodules in execution order (stages run last to first)."""
        yield from self.project_in.modules()
        for stage in reversed(self.stages):
            yield from stage.modules()
        yield from self.project_out.modules()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project_in(z)
        for stage in reversed(self.stages):
            x = stage(x)
        return self.project_out(x)


class Model(MegavgModel):
    """DC-AE-V autoencoder. ``encode``: B,3,T,H,W in [-1,1] -> latent; ``decode``: latent -> video."""

    def __init__(self, args: Args):
        super().__init__()
        validate(args)
        self.args = args
        self.encoder = Encoder(args)
        self.decoder = Decoder(args)
        self._warned: set[str] = set()

    @property
    def spatial_compression(self) -> int:
        return self.args.spatial_compression

    @property
    def temporal_compression(self) -> int:
        return self.args.temporal_compression

    @property
    def frame_chunk(self) -> int:
        """Input frames per encoder chunk: every chunk-causal conv's chunk boundaries fall on multiples."""
        return _period(self.encoder.modules(), self.temporal_compression, downsampling=True)

    @property
    def latent_chunk(self) -> int:
        """Latent frames per decoder chunk (same role as :attr:`frame_chunk`, for the decoder)."""
        return _period(self.decoder.modules_in_order(), 1, downsampling=False)

    def _note_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.info(message)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat the last frame to a multiple of the temporal compression; edge-pad H, W to multiples of
        the spatial compression (logged once per model)."""
        if x.ndim != 5 or x.shape[1] != self.args.in_channels:
            raise ValueError(f"expected video B,{self.args.in_channels},T,H,W, got {tuple(x.shape)}")
        T, H, W = x.shape[2:]
        t, s = self.temporal_compression, self.spatial_compression
        pad_t, pad_h, pad_w = -T % t, -H % s, -W % s
        if pad_t:
            self._note_once("t", f"DC-AE-V: {T} frames padded to {T + pad_t} (repeated last frame)")
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pad_t, -1, -1)], dim=2)
        if pad_h or pad_w:
            self._note_once(
                "hw", f"DC-AE-V: {H}x{W} is not a multiple of {s}: edge-padded to {H + pad_h}x{W + pad_w}"
            )
            x = F.pad(x, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """B,3,T,H,W in [-1,1] -> B,c,ceil(T/t),ceil(H/s),ceil(W/s) (unscaled latent)."""
        return self.encoder(self.pad_input(x))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """B,3,H,W in [-1,1] -> one latent frame: the image repeated to fill one temporal compression."""
        return self.encode(image.unsqueeze(2).expand(-1, -1, self.temporal_compression, -1, -1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """B,c,t',h,w latent (unscaled) -> B,3,t'·t,h·s,w·s video."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))`` trimmed/cropped to the input's T, H, W."""
        T, H, W = x.shape[2:]
        return self.decode(self.encode(x))[:, :, :T, :H, :W]


def chunk_convs(module: nn.Module) -> list[ChunkCausalConv3d]:
    """Every chunk-causal conv with temporal extent in ``module`` (those that need left context)."""
    return [m for m in module.modules() if isinstance(m, ChunkCausalConv3d) and m.pad_t > 0]


def _period(modules, unit: int, downsampling: bool) -> int:
    """Smallest input length (a multiple of ``unit``) after which every conv is at a chunk boundary.

    Walks the convs in execution order, tracking the time scale (input frames per layer frame)."""
    period, scale, seen = unit, Fraction(1), set()
    for m in modules:
        if isinstance(m, (ConvPixelUnshuffle, ConvPixelShuffle)):
            period = _with_conv(period, m.conv, scale)  # the conv runs before the (un)shuffle
            seen.add(id(m.conv))
            scale = scale * m.t if downsampling else scale / m.t
        elif isinstance(m, ChunkCausalConv3d) and m.pad_t > 0 and id(m) not in seen:
            period = _with_conv(period, m, scale)
    return period


def _with_conv(period: int, conv: ChunkCausalConv3d, scale: Fraction) -> int:
    if conv.pad_t == 0:
        return period
    return math.lcm(period, (conv.chunk * scale).numerator)  # smallest integer multiple of the chunk
