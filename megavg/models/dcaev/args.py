"""DC-AE-V configuration: the authors' architecture description as strict dataclasses, plus block strings.

The encoder and decoder are each described the way the authors' ARCH.json describes them: per-stage
``width_list`` / ``depth_list``, and *block strings* naming each block and its temporal chunk length::

    ChunkCausalResBlock3d@<kS>@<kT>@<L>                     residual block of two convs
    ChunkCausalConvPixelUnshuffle@<s>@<t>@<kS>@<kT>@<L>     conv then 3-D pixel-unshuffle (s spatial, t time)
    ChunkCausalConvPixelShuffle@<s>@<t>@<kS>@<kT>@<L>       conv then 3-D pixel-shuffle
    ChunkCausalConvLayer3d@<kS>@<kT>@<L>                    a single conv

``kS`` / ``kT`` are the spatial / temporal kernel sizes and ``L`` the chunk length (in frames *of the
layer's input*) of the chunk-causal temporal padding; see :mod:`megavg.models.dcaev.blocks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from megavg.utils.errors import UserError

RES_BLOCK = "ChunkCausalResBlock3d"
UNSHUFFLE_BLOCK = "ChunkCausalConvPixelUnshuffle"
SHUFFLE_BLOCK = "ChunkCausalConvPixelShuffle"
CONV_BLOCK = "ChunkCausalConvLayer3d"
_NUM_FIELDS = {RES_BLOCK: 3, CONV_BLOCK: 3, UNSHUFFLE_BLOCK: 5, SHUFFLE_BLOCK: 5}


@dataclass(frozen=True)
class BlockSpec:
    """One parsed block string."""

    name: str
    kernel_s: int
    kernel_t: int
    chunk: int
    factor_s: int = 1
    factor_t: int = 1


def parse_block(text: str, allowed: tuple[str, ...], where: str) -> BlockSpec:
    """Parse a block string such as ``ChunkCausalResBlock3d@3@3@40``; errors name ``where``."""
    name, *fields = text.split("@")
    if name not in allowed:
        raise UserError(f"config {where}: block {name!r} is not supported here (use one of {list(allowed)})")
    if len(fields) != _NUM_FIELDS[name] or not all(f.isdigit() and int(f) > 0 for f in fields):
        count = _NUM_FIELDS[name]
        raise UserError(f"config {where}: {text!r} needs {count} positive integers after the name")
    values = [int(f) for f in fields]
    if name in (UNSHUFFLE_BLOCK, SHUFFLE_BLOCK):
        spec = BlockSpec(name, values[2], values[3], values[4], factor_s=values[0], factor_t=values[1])
    else:
        spec = BlockSpec(name, values[0], values[1], values[2])
    if spec.kernel_s % 2 == 0 or spec.kernel_t % 2 == 0:
        raise UserError(f"config {where}: {text!r}: kernel sizes must be odd")
    if spec.kernel_t // 2 > spec.chunk:
        raise UserError(f"config {where}: {text!r}: temporal padding is longer than the chunk")
    return spec


def _per_stage(value: str | tuple[str, ...], count: int, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) * count
    if len(value) != count:
        raise UserError(f"config {where}: expected one block string or {count}, got {len(value)}")
    return tuple(value)


@dataclass
class EncoderArgs:
    """Encoder description (same keys as the authors' encoder config)."""

    width_list: tuple[int, ...] = (8, 16, 32, 32)
    depth_list: tuple[int, ...] = (0, 1, 1, 1)
    block_type: str | tuple[str, ...] = "ChunkCausalResBlock3d@3@3@8"
    downsample_block_type: str | tuple[str, ...] = "ChunkCausalConvPixelUnshuffle@2@1@3@3@8"
    project_in_block_type: str = "ChunkCausalConvPixelUnshuffle@2@1@3@3@8"
    project_out_block_type: str = "ChunkCausalConvLayer3d@3@3@2"
    norm: str = "rms3d"
    act: str = "silu"
    downsample_shortcut: str = "averaging"


@dataclass
class DecoderArgs:
    """Decoder description (same keys as the authors' decoder config)."""

    width_list: tuple[int, ...] = (8, 16, 32, 32)
    depth_list: tuple[int, ...] = (0, 1, 1, 1)
    block_type: str | tuple[str, ...] = "ChunkCausalResBlock3d@3@3@8"
    upsample_block_type: str | tuple[str, ...] = "ChunkCausalConvPixelShuffle@2@1@3@3@8"
    project_in_block_type: str = "ChunkCausalConvLayer3d@3@3@2"
    project_out_block_type: str = "ChunkCausalConvPixelShuffle@2@1@3@3@8"
    norm: str = "rms3d"
    act: str = "silu"
    out_norm: str = "rms3d"
    out_act: str = "silu"
    upsample_shortcut: str = "duplicating"


@dataclass
class Args:
    """DC-AE-V model args. ``scaling_factor`` multiplies latents before diffusion (not applied here)."""

    in_channels: int = 3
    latent_channels: int = 4
    encoder: EncoderArgs = field(default_factory=EncoderArgs)
    decoder: DecoderArgs = field(default_factory=DecoderArgs)
    scaling_factor: float = 1.0
    norm_eps: float = 1e-5

    @property
    def spatial_compression(self) -> int:
        return math.prod(spec.factor_s for spec in encoder_resamplers(self))

    @property
    def temporal_compression(self) -> int:
        return math.prod(spec.factor_t for spec in encoder_resamplers(self))


@dataclass(frozen=True)
class StagePlan:
    """What one stage holds: width, its block strings, and the resampler (None when absent)."""

    width: int
    blocks: tuple[BlockSpec, ...]
    resample: BlockSpec | None
    resample_in: int
    resample_out: int


def _check_lists(width_list, depth_list, where: str) -> None:
    if len(width_list) != len(depth_list) or len(width_list) < 2:
        raise UserError(f"config {where}: width_list and depth_list need the same length (at least 2)")
    if depth_list[-1] <= 0 or any(d < 0 for d in depth_list) or any(w <= 0 for w in width_list):
        raise UserError(f"config {where}: widths must be positive, depths >= 0 and the last depth > 0")
    if any(d == 0 for d in depth_list[1:]):
        raise UserError(f"config {where}: only the first stage may have depth 0")


def encoder_plan(args: Args) -> list[StagePlan]:
    """Stages of the encoder in order; stage i downsamples from width i to i+1 when it has blocks."""
    enc = args.encoder
    _check_lists(enc.width_list, enc.depth_list, "encoder")
    n = len(enc.width_list)
    blocks = _per_stage(enc.block_type, n, "encoder.block_type")
    downs = _per_stage(enc.downsample_block_type, n - 1, "encoder.downsample_block_type")
    plan = []
    for i, (width, depth) in enumerate(zip(enc.width_list, enc.depth_list)):
        spec = parse_block(blocks[i], (RES_BLOCK,), f"encoder.block_type[{i}]")
        down = None
        if i < n - 1 and depth > 0:
            down = parse_block(downs[i], (UNSHUFFLE_BLOCK,), f"encoder.downsample_block_type[{i}]")
        out = enc.width_list[i + 1] if down else width
        plan.append(StagePlan(width, (spec,) * depth, down, width, out))
    return plan


def decoder_plan(args: Args) -> list[StagePlan]:
    """Stages of the decoder indexed like the authors' (run from last to first); stage i upsamples
    from width i+1 to width i before its blocks when it has blocks."""
    dec = args.decoder
    _check_lists(dec.width_list, dec.depth_list, "decoder")
    n = len(dec.width_list)
    blocks = _per_stage(dec.block_type, n, "decoder.block_type")
    ups = _per_stage(dec.upsample_block_type, n - 1, "decoder.upsample_block_type")
    plan = []
    for i, (width, depth) in enumerate(zip(dec.width_list, dec.depth_list)):
        spec = parse_block(blocks[i], (RES_BLOCK,), f"decoder.block_type[{i}]")
        up = None
        if i < n - 1 and depth > 0:
            up = parse_block(ups[i], (SHUFFLE_BLOCK,), f"decoder.upsample_block_type[{i}]")
        inp = dec.width_list[i + 1] if up else width
        plan.append(StagePlan(width, (spec,) * depth, up, inp, width))
    return plan


def encoder_resamplers(args: Args) -> list[BlockSpec]:
    """The encoder's project-in block then every stage downsample, in execution order."""
    where = "encoder.project_in_block_type"
    first = parse_block(args.encoder.project_in_block_type, (UNSHUFFLE_BLOCK,), where)
    return [first] + [stage.resample for stage in encoder_plan(args) if stage.resample]


def decoder_resamplers(args: Args) -> list[BlockSpec]:
    """Every decoder upsample in execution order, then the project-out block."""
    where = "decoder.project_out_block_type"
    last = parse_block(args.decoder.project_out_block_type, (SHUFFLE_BLOCK,), where)
    ups = [stage.resample for stage in reversed(decoder_plan(args)) if stage.resample]
    return ups + [last]


def validate(args: Args) -> None:
    """Check the whole description once (block strings, channel divisibility, matching compression)."""
    for coder in (args.encoder, args.decoder):
        if coder.norm != "rms3d" or coder.act != "silu":
            raise UserError("config: only norm 'rms3d' and act 'silu' are supported")
    if args.decoder.out_norm != "rms3d" or args.decoder.out_act != "silu":
        raise UserError("config decoder: only out_norm 'rms3d' and out_act 'silu' are supported")
    if args.encoder.downsample_shortcut != "averaging" or args.decoder.upsample_shortcut != "duplicating":
        raise UserError("config: only downsample_shortcut 'averaging' / upsample_shortcut 'duplicating'")
    parse_block(args.encoder.project_out_block_type, (CONV_BLOCK,), "encoder.project_out_block_type")
    parse_block(args.decoder.project_in_block_type, (CONV_BLOCK,), "decoder.project_in_block_type")
    for name, plan in (("encoder", encoder_plan(args)), ("decoder", decoder_plan(args))):
        for i, stage in enumerate(plan):
            r = stage.resample
            if r and (stage.resample_in * r.factor_s**2 * r.factor_t) % stage.resample_out != 0:
                raise UserError(f"config {name}: stage {i} widths do not fit the resampling shortcut")
            if r and name == "encoder" and stage.resample_out % (r.factor_s**2 * r.factor_t) != 0:
                raise UserError(f"config encoder: stage {i} output width must divide by s^2*t")
    enc = (args.spatial_compression, args.temporal_compression)
    dec_specs = decoder_resamplers(args)
    dec = (math.prod(s.factor_s for s in dec_specs), math.prod(s.factor_t for s in dec_specs))
    if enc != dec:
        raise UserError(f"config: encoder compresses (space, time) by {enc}, the decoder expands by {dec}")
