"""LPIPS-style perceptual distance on VGG16 features, for videos (per frame).

Distance of two images x, y in [-1, 1]: both go through VGG16's convolutional stack (ImageNet input
normalisation); at the five taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) the features are scaled to
unit length over channels, their squared difference is weighted per channel (learned LPIPS linear weights
when given, else 1 for every channel), averaged over space and summed over the taps.

Weights come only from local files the user names: ``vgg`` = a VGG16 state dict with torchvision's key
names (``features.0.weight`` ... ``features.28.bias``; ``classifier.*`` is ignored), ``.safetensors`` or a
weights-only ``.pt``/``.pth``; ``lpips`` (optional) = the linear-layer weights with the lpips package's
names (``lin0.model.1.weight`` ... ``lin4.model.1.weight``, shape [1, C, 1, 1]). ``vgg="random"`` builds a
randomly initialised network (seed 0): the loss mechanics work but the distance means nothing (tests).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from megavg.utils.errors import UserError
from megavg.utils.logging import get_logger

log = get_logger(__name__)

# VGG16 (configuration "D"): channels of each conv, "M" = 2x2 max pool. Layer indices match torchvision's
# ``features`` Sequential, so its state-dict keys load unchanged.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPS = (3, 8, 15, 22, 29)  # indices of the ReLUs whose outputs are compared
TAP_CHANNELS = (64, 128, 256, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM = "random"


def vgg16_features() -> nn.Sequential:
    """VGG16's convolutional stack up to relu5_3 (index 29), torchvision's layer indices."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Perceptual distance ``forward(x, y) -> [N]`` of images N,3,H,W in [-1, 1]; frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.lin = nn.ParameterList(nn.Parameter(torch.ones(c)) for c in TAP_CHANNELS)
        # [-1, 1] -> [0, 1] -> ImageNet normalisation, folded into one shift and scale
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("shift", (2 * mean - 1).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", (2 * std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised (over channels) features at the five taps."""
        out = []
        x = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0])
        for fx, fy, w in zip(self.taps(x), self.taps(y), self.lin):
            diff = (fx - fy).pow(2) * w.view(1, -1, 1, 1)  # N,C,h,w
            total = total + diff.sum(dim=1).mean(dim=(1, 2))
        return total

    def load_vgg(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Copy torchvision-named VGG16 weights in (``classifier.*`` and other extra keys ignored)."""
        for name, param in self.features.named_parameters():
            _copy(param, state, f"features.{name}", source)

    def load_lin(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Copy lpips-named channel weights ``lin{i}.model.1.weight`` ([1, C, 1, 1]) in."""
        for i, param in enumerate(self.lin):
            key = f"lin{i}.model.1.weight"
            _copy(param, {key: state[key].flatten()} if key in state else state, key, source)


def _copy(param: torch.Tensor, state: dict[str, torch.Tensor], key: str, source: str) -> None:
    if key not in state:
        raise UserError(f"{source}: no tensor {key!r} (expected torchvision VGG16 / lpips key names)")
    value = state[key]
    if tuple(value.shape) != tuple(param.shape):
        raise UserError(f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(value.to(param.dtype))


def build_lpips(vgg: str, lpips: str = "") -> LPIPS:
    """An :class:`LPIPS` with weights from the files ``vgg`` (and ``lpips``), or random (``vgg="random"``)."""
    from megavg.models.wan.state_dict_adapter import read_weights

    if vgg == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = LPIPS()
        log.warning("perceptual loss: randomly initialised VGG16 (vgg: random); distances are meaningless")
    else:
        model = LPIPS()
        model.load_vgg(read_weights(Path(vgg)), vgg)
    if lpips:
        model.load_lin(read_weights(Path(lpips)), lpips)
    return model


def sample_frames(frames: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct frame indices out of ``frames`` (all of them when ``count`` is 0 or larger)."""
    if count <= 0 or count >= frames:
        return torch.arange(frames)
    return torch.randperm(frames, generator=generator)[:count].sort().values


def video_distance(
    net: LPIPS, x: torch.Tensor, y: torch.Tensor, frames: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean LPIPS over the batch and the chosen ``frames`` of videos B,3,T,H,W (all frames if None)."""
    if frames is not None:
        x, y = x[:, :, frames], y[:, :, frames]
    # B,3,T,H,W -> B*T,3,H,W (time folded into the batch)
    fold = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731
    return net(fold(x).to(net.shift.dtype), fold(y).to(net.shift.dtype)).mean()


def check_weight_files(vgg: str, lpips: str, key: str) -> None:
    """Config check before launch: the named files exist."""
    for name, path in (("vgg", vgg), ("lpips", lpips)):
        if path and path != RANDOM and not Path(path).is_file():
            raise UserError(f"config {key}.{name}: {path} not found")
    if not vgg:
        raise UserError(f"config {key}.vgg: set a VGG16 weights file (torchvision key names) or 'random'")
