"""The Wan-2.1 diffusion transformer (T2V and I2V), readable top to bottom.

    latents [B, C, T, H, W] --patch_embed--> tokens [B, S, dim], S = T/pt * H/ph * W/pw
    timestep [B] --time_embed--> modulation;  text [B, L, text_dim] (and CLIP image [B, L', image_dim])
    --> blocks (self-attn with 3-D RoPE, cross-attn, FFN) --> head --> unpatchify --> [B, C_out, T, H, W]

The model knows nothing of ranks: sequence parallelism replaces ``token_shard`` / ``token_gather`` and
wraps each block's ``self_attn.core`` afterwards (:func:`megavg.models.wan.parallelize.apply_ulysses`).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from megavg.layers import fp8_autocast, fp8_blocks, rope_tables
from megavg.layers.backends import resolve_linear
from megavg.layers.fp8 import FP8_TOKEN_MULTIPLE
from megavg.layers.recompute import recompute
from megavg.models.base import MegavgModel
from megavg.models.wan.args import Args
from megavg.models.wan.layers import Head, ImageEmbedding, TextEmbedding, TimeEmbedding, WanBlock
from megavg.utils.errors import UserError


class TokenPad(nn.Module):
    """Token shard point without sequence parallelism: zero-pad [B, S, dim] to a multiple of ``multiple``.

    FP8 GEMMs need token counts divisible by 16; padding tokens never act as attention keys
    (:class:`AttentionCore` cuts them off) and are cropped from the output.
    """

    def __init__(self, multiple: int = 1):
        super().__init__()
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, -x.shape[1] % self.multiple))


class TokenCrop(nn.Module):
    """Token gather point without sequence parallelism: drop padding tokens."""

    def forward(self, x: torch.Tensor, length: int) -> torch.Tensor:
        return x[:, :length]


class Model(MegavgModel):
    """Wan-2.1 DiT. ``forward(latents, timestep, text, image=None)`` -> prediction [B, C_out, T, H, W]."""

    keep_fp32 = ("time_embed", "modulation")  # the time path: float32 in every inference dtype (as Wan)

    def __init__(self, args: Args):
        super().__init__()
        if args.layers.fp8.enabled and resolve_linear(args.layers.linear) != "te":
            raise UserError("wan: layers.fp8.enabled needs Transformer Engine linears (not available here)")
        self.args = args
        self.patch_embed = nn.Conv3d(args.in_channels, args.dim, args.patch_size, stride=args.patch_size)
        self.time_embed = TimeEmbedding(args.freq_dim, args.dim)
        self.text_embed = TextEmbedding(args.text_dim, args.dim)
        self.image_embed = ImageEmbedding(args.image_dim, args.dim) if args.is_i2v else None
        self.blocks = nn.ModuleList(WanBlock(args) for _ in range(args.num_layers))
        self.head = Head(args)
        self.token_shard = TokenPad(self.token_multiple)
        self.token_gather = TokenCrop()
        # FP8 amax reduction group; None is TE's default, the world (all DP x SP ranks, as training wants)
        self.fp8_group = None

    def forward(self, latents, timestep, text, image=None, *, context=None, step_cache=None) -> torch.Tensor:
        """latents [B, C, T, H, W]; timestep [B], or [B, S] one per token (Wan 2.2 TI2V: the conditioning
        frame's tokens at 0; S = T/pt * H/ph * W/pw in token order); text [B, L, text_dim];
        image [B, L', image_dim] (I2V).

        Inference hooks (training passes neither): ``context`` = :meth:`encode_context` of the same text
        and image (then ``text`` and ``image`` are not read); ``step_cache`` = a callable
        ``(x, run, first_block, time_proj) -> x`` that may skip the block stack
        (:mod:`megavg.infer.step_cache`); ``run(x, start, stop)`` runs blocks ``start:stop``."""
        grid = self._check_inputs(latents, image if context is None else context)
        x = self.patch_embed(latents).flatten(2).transpose(1, 2)  # [B, S, dim]
        rope = rope_tables(self.args.head_dim, grid, self.args.rope_theta, latents.device)
        time_emb, time_proj = self.time_embed(self._check_timestep(timestep, x.shape[:2]))
        if context is None:  # training: each block projects the embedded context itself
            text = self.text_embed(text)
            image = self.image_embed(image) if image is not None else None
        x = self.token_shard(x)  # [B, S_local (padded), dim]
        if timestep.ndim == 2:  # per-token time path, sharded like the tokens: [B, S_local, (6,) dim]
            time_emb = self.token_shard(time_emb)
            time_proj = self.token_shard(time_proj.flatten(2)).unflatten(2, (6, -1))

        def run(h: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
            return self._run_blocks(h, (text, image, context), time_proj, rope, start, stop)

        x = run(x) if step_cache is None else step_cache(x, run, self.blocks[0], time_proj)
        x = self.token_gather(self.head(x, time_emb), math.prod(grid))  # [B, S, C_out * pt * ph * pw]
        return self.unpatchify(x, grid)

    def encode_context(self, text: torch.Tensor, image: torch.Tensor | None = None) -> list[tuple]:
        """Per block, the cross-attention keys/values of ``text`` [B, L, text_dim] (and ``image``): they
        do not depend on the latents or the timestep, so a sampler computes them once per prompt."""
        text = self.text_embed(text)
        image = self.image_embed(image) if image is not None else None
        return [block.cross_attn.project(text, image) for block in self.blocks]

    def _run_blocks(self, x, cond, time_proj, rope, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Blocks ``start:stop``; ``cond`` = (embedded text, embedded image, context or None).

        One FP8 autocast region per run of consecutive FP8 blocks (all of them with the delayed recipe,
        which keeps no bf16 blocks): delayed scaling all-reduces the amaxes when the outermost region
        exits, so a region per block would issue one all-reduce per block."""
        text, image, context = cond
        in_fp8 = fp8_blocks(len(self.blocks), self.args.layers.fp8)
        span = range(start, len(self.blocks) if stop is None else stop)
        for fp8, indices in itertools.groupby(span, key=in_fp8.__getitem__):
            with fp8_autocast(fp8, self.args.layers.fp8, self.fp8_group):
                for i in indices:
                    block, kv = self.blocks[i], None if context is None else context[i]
                    if self.args.grad_checkpointing and torch.is_grad_enabled():
                        linear = self.args.layers.linear
                        x = recompute(block, x, text, image, time_proj, rope, kv, linear=linear)
                    else:
                        x = block(x, text, image, time_proj, rope, kv)
        return x

    @staticmethod
    def _check_timestep(timestep: torch.Tensor, tokens: tuple[int, int]) -> torch.Tensor:
        """``timestep`` [B] or per token [B, S] (``tokens`` = (B, S))."""
        if timestep.shape not in ((tokens[0],), tuple(tokens)):
            raise UserError(
                f"wan: timestep must be [B] or [B, S] = {list(tokens)}, got {list(timestep.shape)}"
            )
        return timestep

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, T'*H'*W', C*pt*ph*pw] -> [B, C, T'*pt, H'*ph, W'*pw]."""
        (pt, ph, pw), (t, h, w) = self.args.patch_size, grid
        x = x.reshape(x.shape[0], t, h, w, pt, ph, pw, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, T', pt, H', ph, W', pw]
        return x.reshape(x.shape[0], x.shape[1], t * pt, h * ph, w * pw)

    def _check_inputs(self, latents: torch.Tensor, image) -> tuple[int, int, int]:
        """``image``: the CLIP tokens or None, or a context list (I2V ones hold image keys/values)."""
        if latents.ndim != 5 or latents.shape[1] != self.args.in_channels:
            raise UserError(
                f"wan: latents must be [B, {self.args.in_channels}, T, H, W], got {tuple(latents.shape)}"
            )
        has_image = len(image[0]) == 4 if isinstance(image, list) else image is not None
        if has_image != self.args.is_i2v:
            kind = "I2V needs" if self.args.is_i2v else "T2V takes no"
            raise UserError(
                f"wan: this model is {'I2V' if self.args.is_i2v else 'T2V'}: {kind} CLIP image tokens"
            )
        sizes = latents.shape[2:]
        if any(n % p for n, p in zip(sizes, self.args.patch_size)):
            raise UserError(
                f"wan: latent size {tuple(sizes)} is not divisible by patch {self.args.patch_size}"
            )
        return tuple(n // p for n, p in zip(sizes, self.args.patch_size))

    @property
    def token_multiple(self) -> int:
        """Token count each rank's shard is padded to a multiple of (16 under FP8, else 1)."""
        return FP8_TOKEN_MULTIPLE if self.args.layers.fp8.enabled else 1

    def num_tokens(self, latent_shape: tuple[int, ...]) -> int:
        """Sequence length for latents of shape (..., T, H, W)."""
        return math.prod(n // p for n, p in zip(latent_shape[-3:], self.args.patch_size))
