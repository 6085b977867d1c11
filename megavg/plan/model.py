"""What the planner knows about a model: parameters (total, trainable, LoRA, per block) and, per layout,
activation bytes and FLOPs, all from the task's own model code built on the meta device."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from megavg.conditioning.text import TEXT_TOKENS
from megavg.train.config import TrainConfig
from megavg.train.flops import build_meta, with_layers
from megavg.utils.errors import UserError
from megavg.utils.meta_trace import Trace, trace_forward

IMAGE_TOKENS = 257  # CLIP ViT-H tokens (I2V)


@dataclass
class ModelFacts:
    family: str  # "wan" or "dcaev"
    args: Any
    params: int
    trainable: int
    lora: int  # trainable LoRA parameters (part of ``trainable``)
    block_params: int  # the largest transformer block / autoencoder stage: what ZeRO-3 gathers at once
    layers: int  # transformer blocks (0: no per-block activation checkpointing)
    heads: int | None
    frame_chunk: int = 0  # DC-AE-V: frames per temporal chunk (temporal SP hands out whole chunks)


@dataclass
class ForwardFacts:
    """Per micro-batch on one rank: ``outside`` = bytes saved outside the blocks, ``per_block`` by one
    block, ``block_input`` = one block's input (all checkpointing keeps per block), ``largest`` = the
    largest saved tensor; FLOPs of the rank's share of the forward."""

    outside: int
    per_block: int
    block_input: int
    layers: int
    flops: int
    largest: int

    def saved(self, checkpointing: bool) -> int:
        """Bytes held for backward at the end of the forward."""
        per = self.block_input if checkpointing else self.per_block
        return self.outside + self.layers * per

    def peak(self, checkpointing: bool) -> int:
        """Saved bytes plus the backward working set: the gradient of the largest saved tensor and of its
        input (2 x ``largest``), and with checkpointing the recomputed block's saved tensors."""
        return self.saved(checkpointing) + 2 * self.largest + (self.per_block if checkpointing else 0)


def family_of(cfg: TrainConfig) -> str:
    from megavg.models.registry import family_of as registry_family
    from megavg.tasks.base import model_args

    return registry_family(model_args(cfg.model))


def _counts(model: nn.Module) -> tuple[int, int, int]:
    """(parameters, trainable, trainable LoRA)."""
    params = list(model.named_parameters())
    return (
        sum(p.numel() for _, p in params),
        sum(p.numel() for _, p in params if p.requires_grad),
        sum(p.numel() for n, p in params if p.requires_grad and ".lora_" in n),
    )


def model_facts(cfg: TrainConfig) -> ModelFacts:
    """Parameter counts of the task's model. Wan: from models with 1 and 2 blocks (every block is the same
    size; building and LoRA-wrapping 40 blocks, even on meta, takes long), extrapolated exactly."""
    family = family_of(cfg)
    if family == "dcaev":
        model = build_meta(cfg)
        stages = [*model.encoder.stages, *model.decoder.stages]
        block = max(sum(p.numel() for p in s.parameters()) for s in stages)
        return ModelFacts(family, model.args, *_counts(model), block, 0, None, model.frame_chunk)
    from megavg.tasks.base import model_args

    layers = model_args(cfg.model).num_layers
    one, two = (build_meta(with_layers(cfg, n)) for n in (1, 2))
    c1, c2 = _counts(one), _counts(two)
    total = [a + (layers - 1) * (b - a) for a, b in zip(c1, c2)]
    args = dataclasses.replace(one.args, num_layers=layers)
    return ModelFacts(family, args, *total, c2[0] - c1[0], layers, args.num_heads)


# ------------------------------------------------------------------------------------------------ shapes
def latent_shape(args, frames: int, size: tuple[int, int]) -> tuple[int, int, int]:
    """Latent (T, H, W) of a clip for a Wan preset: patch-1 students take DC-AE-V f32t4 latents
    (ceil(T/4), H/32, W/32); the others Wan-VAE f8t4 latents ((T - 1)//4 + 1, H/8, W/8)."""
    (h, w), student = size, tuple(args.patch_size) == (1, 1, 1)
    multiple = 32 if student else 8 * max(args.patch_size[1:])
    if h % multiple or w % multiple:
        vae = "DC-AE-V f32" if student else f"Wan VAE x8 and patch {tuple(args.patch_size)}"
        raise UserError(f"--size {h} {w}: height and width must be multiples of {multiple} ({vae})")
    if student:
        return math.ceil(frames / 4), h // 32, w // 32
    return (frames - 1) // 4 + 1, h // 8, w // 8


def tokens_per_sample(args, frames: int, size: tuple[int, int]) -> int:
    t, h, w = latent_shape(args, frames, size)
    return t * (h // args.patch_size[1]) * (w // args.patch_size[2])


# ------------------------------------------------------------------------------------------------ traces
def _wan_inputs(args, batch: int, tokens: int, dtype) -> tuple:
    """Meta inputs giving ``tokens`` tokens per sample (as one row of patches)."""
    _, ph, pw = args.patch_size
    latents = torch.empty(batch, args.in_channels, 1, ph, pw * tokens, dtype=dtype)
    text = torch.empty(batch, TEXT_TOKENS, args.text_dim, dtype=dtype)
    image = torch.empty(batch, IMAGE_TOKENS, args.image_dim, dtype=dtype) if args.is_i2v else None
    return latents, torch.empty(batch), text, image


class WanTracer:
    """Traces of the task's Wan model with 1 and 2 blocks (their difference is one block), memoised."""

    def __init__(self, cfg: TrainConfig, batch: int, dtype: torch.dtype):
        self.cfg, self.batch, self.dtype = cfg, batch, dtype
        self.models: dict[int, nn.Module] = {}
        self.traces: dict[tuple[int, int], Trace] = {}

    def _model(self, layers: int) -> nn.Module:
        if layers not in self.models:
            self.models[layers] = build_meta(with_layers(self.cfg, layers)).to(self.dtype)
        return self.models[layers]

    def trace(self, layers: int, tokens: int) -> Trace:
        if (layers, tokens) not in self.traces:
            model = self._model(layers)
            with torch.device("meta"):
                inputs = _wan_inputs(model.args, self.batch, tokens, self.dtype)
            self.traces[layers, tokens] = trace_forward(model, lambda: model(*inputs))
        return self.traces[layers, tokens]

    def forward(self, facts: ModelFacts, tokens: int, sp: int) -> ForwardFacts:
        """One rank under Ulysses SP ``sp``: its ceil(S / sp) tokens (attention then holds all tokens of
        H / sp heads: the same bytes) and its share (1 / sp) of the forward FLOPs."""
        local = math.ceil(tokens / sp)
        one, two = self.trace(1, local), self.trace(2, local)
        per_block = two.saved_bytes - one.saved_bytes
        full_one, full_two = self.trace(1, tokens), self.trace(2, tokens)
        flops = full_one.flops + (facts.layers - 1) * (full_two.flops - full_one.flops)
        block_input = self.batch * local * facts.args.dim * self.dtype.itemsize
        outside = one.saved_bytes - per_block
        return ForwardFacts(outside, per_block, block_input, facts.layers, flops // sp, two.largest)


def dcaev_forward(cfg: TrainConfig, batch: int, frames: int, size, sp: int, dtype) -> ForwardFacts:
    """DC-AE-V: one trace of the whole autoencoder on the frames of the most loaded rank (temporal SP
    hands out whole chunks, :func:`megavg.models.dcaev.parallelize.time_split`)."""
    from megavg.models.dcaev.parallelize import time_split

    model = build_meta(cfg).to(dtype)
    local = max(end - start for start, end in time_split(frames, model.frame_chunk, sp))
    with torch.device("meta"):
        video = torch.empty(batch, 3, local, *size, dtype=dtype)
    trace = trace_forward(model, lambda: model(video))
    return ForwardFacts(trace.saved_bytes, 0, 0, 0, trace.flops, trace.largest)
