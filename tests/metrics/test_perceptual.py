"""LPIPS-style perceptual loss: mechanics on a random backbone, and loading torchvision-named VGG16
weights checked against a plain re-computation with F.conv2d."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from megavg.metrics.perceptual import RANDOM, build_lpips, sample_frames, video_distance
from megavg.utils.errors import UserError

CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision's conv indices in vgg16.features
CHANNELS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def torchvision_style_vgg16(seed: int = 1) -> dict[str, torch.Tensor]:
    """A VGG16 state dict with torchvision's key names (random values), classifier included."""
    gen = torch.Generator().manual_seed(seed)
    state, cin = {}, 3
    for idx, cout in zip(CONVS, CHANNELS):
        state[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * (2 / (9 * cin)) ** 0.5
        state[f"features.{idx}.bias"] = torch.randn(cout, generator=gen) * 0.01
        cin = cout
    state["classifier.0.weight"] = torch.randn(8, 4, generator=gen)
    return state


def plain_lpips(state, lin, x, y):
    """Independent LPIPS: conv/relu/pool chain by hand, taps after the 2nd, 4th, 7th, 10th, 13th conv."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pools_after, taps_after = {1, 3, 6, 9}, {1, 3, 6, 9, 12}

    def feats(img):
        h = ((img + 1) / 2 - mean) / std
        out = []
        for k, idx in enumerate(CONVS):
            h = F.relu(F.conv2d(h, state[f"features.{idx}.weight"], state[f"features.{idx}.bias"], padding=1))
            if k in taps_after:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            if k in pools_after:
                h = F.max_pool2d(h, 2)
        return out

    total = 0
    for i, (a, b) in enumerate(zip(feats(x), feats(y))):
        total = total + ((a - b) ** 2 * lin[i].view(1, -1, 1, 1)).sum(1).mean((1, 2))
    return total


def test_zero_for_identical_positive_otherwise_and_gradient_flows():
    net = build_lpips(RANDOM)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert net(x, x).abs().max() == 0
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    d = net(y, x)
    assert (d > 0).all()
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in net.parameters())


def test_loads_torchvision_vgg16_and_lpips_weights(tmp_path):
    state = torchvision_style_vgg16()
    save_file(state, str(tmp_path / "vgg16.safetensors"))
    lin = [torch.rand(c) for c in (64, 128, 256, 512, 512)]
    lin_state = {f"lin{i}.model.1.weight": w.view(1, -1, 1, 1) for i, w in enumerate(lin)}
    torch.save(lin_state, tmp_path / "lin.pth")
    net = build_lpips(str(tmp_path / "vgg16.safetensors"), str(tmp_path / "lin.pth"))
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(net(x, y), plain_lpips(state, lin, x, y), rtol=1e-4, atol=1e-6)


def test_missing_key_names_the_file(tmp_path):
    state = torchvision_style_vgg16()
    del state["features.28.weight"]
    path = tmp_path / "vgg.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"vgg\.pt: no tensor 'features\.28\.weight'"):
        build_lpips(str(path))


def test_video_distance_is_the_mean_over_the_chosen_frames():
    net = build_lpips(RANDOM)
    x, y = torch.rand(2, 3, 5, 32, 32) * 2 - 1, torch.rand(2, 3, 5, 32, 32) * 2 - 1
    frames = sample_frames(5, 3, torch.Generator().manual_seed(3))
    assert len(set(frames.tolist())) == 3 and frames.tolist() == sorted(frames.tolist())
    per_frame = [net(x[:, :, t], y[:, :, t]) for t in frames.tolist()]  # [B] each
    torch.testing.assert_close(video_distance(net, x, y, frames), torch.stack(per_frame).mean())
    assert sample_frames(5, 0, torch.Generator()).tolist() == [0, 1, 2, 3, 4]
