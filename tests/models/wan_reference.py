"""Test helpers: the diffusers WanTransformer3DModel (an independent implementation) with tiny configs."""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel

from megavg.models import build
from tests.models.wan_inputs import inputs

__all__ = ["diffusers_config", "diffusers_forward", "inputs", "random_diffusers"]


def diffusers_config(args) -> dict:
    """The diffusers config describing the same architecture as megavg ``args``."""
    return dict(
        patch_size=tuple(args.patch_size),
        num_attention_heads=args.num_heads,
        attention_head_dim=args.dim // args.num_heads,
        in_channels=args.in_channels,
        out_channels=args.out_channels,
        text_dim=args.text_dim,
        freq_dim=args.freq_dim,
        ffn_dim=args.ffn_dim,
        num_layers=args.num_layers,
        cross_attn_norm=args.cross_attn_norm,
        qk_norm="rms_norm_across_heads",
        eps=args.eps,
        image_dim=args.image_dim,
        added_kv_proj_dim=args.dim if args.image_dim else None,
    )


def random_diffusers(preset: str, seed: int = 0) -> WanTransformer3DModel:
    """A diffusers model of ``preset``'s architecture with every parameter random (norms included)."""
    args = build_args(preset)
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**diffusers_config(args)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and "norm" in _name(model, p) else 0.0))
    return model


def _name(model, param) -> str:
    return next(n for n, p in model.named_parameters() if p is param)


def build_args(preset: str):
    with torch.device("meta"):
        return build(preset).args


def diffusers_forward(model: WanTransformer3DModel, latents, timestep, text, image):
    """diffusers' forward; I2V context is [image tokens, text tokens] as its attention expects."""
    with torch.no_grad():
        return model(latents, timestep, text, encoder_hidden_states_image=image, return_dict=False)[0]
