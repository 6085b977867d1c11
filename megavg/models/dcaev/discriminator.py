"""3-D PatchGAN discriminator for the adversarial phase of DC-AE-V training.

A stack of 3-D convolutions with LeakyReLU: every layer halves H and W (kernel 3x4x4), the middle layers
also halve T (all but the first), the last conv maps to one logit per space-time patch.
Normalisation is GroupNorm (per sample: no cross-rank statistics, unlike BatchNorm under data
parallelism). Input B,3,T,H,W in [-1, 1]; output logits B,1,T',H',W'.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn


@dataclasses.dataclass
class DiscriminatorArgs:
    """``channels`` of the first layer, doubled per layer up to 8x; ``layers`` strided layers."""

    in_channels: int = 3
    channels: int = 64
    layers: int = 3


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class PatchDiscriminator3d(nn.Module):
    """Patch logits of a video: B,3,T,H,W -> B,1,T',H',W'."""

    def __init__(self, args: DiscriminatorArgs) -> None:
        super().__init__()
        self.args = args
        width = args.channels
        k = (3, 4, 4)
        layers: list[nn.Module] = [nn.Conv3d(args.in_channels, width, k, (1, 2, 2), 1), nn.LeakyReLU(0.2)]
        for i in range(1, args.layers):
            out = args.channels * min(2**i, 8)
            layers += [nn.Conv3d(width, out, k, 2, 1, bias=False), _norm(out), nn.LeakyReLU(0.2)]
            width = out
        out = args.channels * min(2**args.layers, 8)
        layers += [nn.Conv3d(width, out, 3, 1, 1, bias=False), _norm(out), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv3d(out, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)
