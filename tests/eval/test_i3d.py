"""I3D weight files: the pytorch-i3d key layout (as in its rgb_imagenet.pt: old-torch files without
``num_batches_tracked``, optionally DataParallel's ``module.``) loads, a wrong shape is refused, and a
TorchScript file is called with StyleGAN-V's convention (``return_features=True``)."""

import pytest
import torch
from torch import nn

from megavg.eval.i3d import InceptionI3d, load_i3d
from megavg.utils.errors import UserError

# pytorch_i3d.py: the endpoints holding parameters, and each Inception block's branches
UNITS = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"]
MIXED = [
    "Mixed_3b",
    "Mixed_3c",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "Mixed_5b",
    "Mixed_5c",
]
BN = ["conv3d.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]


def pytorch_i3d_keys() -> set[str]:
    keys = {f"{u}.{p}" for u in UNITS for p in BN}
    keys |= {f"{m}.{b}.{p}" for m in MIXED for b in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b") for p in BN}
    return keys | {"logits.conv3d.weight", "logits.conv3d.bias"}


def test_state_dict_layout_and_loading(tmp_path):
    source = load_i3d("random")
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(state) == pytorch_i3d_keys()
    assert state["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    assert state["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    g = torch.Generator().manual_seed(1)
    state = {
        k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        for k, v in state.items()
    }
    state = {k: v.abs() if "running_var" in k else v for k, v in state.items()}
    path = tmp_path / "rgb_imagenet.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    loaded = load_i3d(str(path))
    x = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    reference = InceptionI3d().eval()
    reference.load_state_dict(state, strict=False)
    torch.testing.assert_close(loaded(x), reference(x))
    assert not torch.allclose(loaded(x), source(x))
    state["Mixed_4b.b1b.conv3d.weight"] = state["Mixed_4b.b1b.conv3d.weight"][:10]
    torch.save(state, path)
    with pytest.raises(UserError, match="Mixed_4b.b1b.conv3d.weight has shape"):
        load_i3d(str(path))


class StyleGanVStandIn(nn.Module):
    """The calling convention of StyleGAN-V's i3d_torchscript.pt; features differ from logits."""

    def forward(
        self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False
    ):
        pooled = x.mean(dim=(2, 3, 4))  # B,3
        if rescale or resize:
            pooled = pooled * 0
        out = torch.cat([pooled] * 133 + [pooled[:, :1]], dim=1)  # B,400
        return out if return_features else out.softmax(dim=1)


def test_torchscript_file(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(StyleGanVStandIn()).save(str(path))
    model = load_i3d(str(path))
    x = torch.rand(2, 3, 4, 8, 8)
    expected = x.mean(dim=(2, 3, 4))
    torch.testing.assert_close(model(x)[:, :3], expected)
