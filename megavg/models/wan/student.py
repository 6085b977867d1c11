"""The DC-VideoGen student (AE-Adapt-V, DESIGN.md section 5): a Wan DiT moved onto a new latent space.

From a base Wan model only two modules change: a new patch embedder for the new latent channels and patch
size (1, 1, 1), and a new output linear (``head.linear``) for the new output channels, initialised to zero
so the student's prediction starts at exactly zero. Every other weight is the base's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from megavg.models.wan.model import Model
from megavg.utils.errors import UserError

NEW_MODULES = ("patch_embed", "head.linear")


def make_student(
    base: Model,
    in_channels: int,
    out_channels: int,
    patch_size: tuple[int, int, int] = (1, 1, 1),
    patch_embed: nn.Conv3d | None = None,
    copy: bool = False,
) -> Model:
    """A student of ``base`` for latents with ``in_channels`` (input) / ``out_channels`` (prediction).

    ``patch_embed``: an already aligned embedder (phase 1) to install; default a freshly initialised one.
    ``copy``: clone the shared weights instead of sharing the base's tensors (sharing saves memory on 14B
    models but training the student then changes the base too).
    """
    args = dataclasses.replace(
        base.args, in_channels=in_channels, out_channels=out_channels, patch_size=tuple(patch_size)
    )
    weight = base.patch_embed.weight
    with torch.device("meta"):
        student = Model(args)
    shared = {k: v for k, v in base.state_dict().items() if not k.startswith(NEW_MODULES)}
    if copy:
        shared = {k: v.clone() for k, v in shared.items()}
    student.load_state_dict(shared, strict=False, assign=True)
    student.patch_embed = patch_embed if patch_embed is not None else _new_embedder(args, weight)
    _check_embedder(student.patch_embed, args)
    student.head.linear = _zero_linear(args.dim, student.head.linear.out_features, weight)
    student.fp8_group = base.fp8_group
    return student


def student_state(
    base_args, base_state: dict[str, Any], in_channels: int, out_channels: int, patch_size=(1, 1, 1)
) -> tuple[Any, dict[str, Any]]:
    """Args and weights of a student without building any model: what :func:`make_student` gives, for
    :func:`megavg.models.registry.save_state`.

    ``base_state`` may hold lazy tensors (``registry.load_state_dict(..., lazy=True)``): the shared
    weights pass through unread, so writing the student of a 14B base holds one shard, not the base.
    The new embedder takes the same random draws as in :func:`make_student`.
    """
    args = dataclasses.replace(
        base_args, in_channels=in_channels, out_channels=out_channels, patch_size=tuple(patch_size)
    )
    like = torch.empty(0, dtype=base_state["patch_embed.weight"].dtype)
    embedder = _new_embedder(args, like)
    head = _zero_linear(args.dim, args.out_channels * math.prod(args.patch_size), like)
    state = {k: v for k, v in base_state.items() if not k.startswith(NEW_MODULES)}
    state |= {f"patch_embed.{k}": v.detach() for k, v in embedder.state_dict().items()}
    state |= {f"head.linear.{k}": v.detach() for k, v in head.state_dict().items()}
    return args, state


def _new_embedder(args, like: torch.Tensor) -> nn.Conv3d:
    kernel = args.patch_size
    return nn.Conv3d(args.in_channels, args.dim, kernel, stride=kernel, device=like.device, dtype=like.dtype)


def _zero_linear(in_features: int, out_features: int, like: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(in_features, out_features, device=like.device, dtype=like.dtype)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def _check_embedder(conv: nn.Module, args) -> None:
    expected = (args.dim, args.in_channels, *args.patch_size)
    if not isinstance(conv, nn.Conv3d) or tuple(conv.weight.shape) != expected:
        shape = tuple(getattr(conv, "weight", torch.empty(0)).shape)
        raise UserError(f"student patch embedder: expected Conv3d weight {expected}, got {shape}")
