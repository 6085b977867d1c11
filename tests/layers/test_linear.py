"""The LayerNorm + linear layer: the torch path against nn.LayerNorm -> nn.Linear, TE's against it (GPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from megavg.layers import make_layer_norm_linear
from megavg.layers.linear import LayerNormLinear


def _plain_pair(layer: nn.Module, eps: float) -> tuple[nn.LayerNorm, nn.Linear]:
    """The unfused reference holding ``layer``'s weights."""
    in_f, out_f = layer.weight.shape[1], layer.weight.shape[0]
    norm, linear = nn.LayerNorm(in_f, eps=eps), nn.Linear(in_f, out_f)
    with torch.no_grad():
        norm.weight.copy_(layer.layer_norm_weight)
        norm.bias.copy_(layer.layer_norm_bias)
        linear.weight.copy_(layer.weight)
        linear.bias.copy_(layer.bias)
    return norm, linear


def test_torch_path_equals_layer_norm_then_linear():
    torch.manual_seed(0)
    layer = make_layer_norm_linear(24, 40, 1e-6, "torch")
    assert isinstance(layer, LayerNormLinear)
    with torch.no_grad():  # non-trivial norm affine
        layer.layer_norm_weight.normal_()
        layer.layer_norm_bias.normal_()
    norm, linear = _plain_pair(layer, 1e-6)
    x = torch.randn(2, 7, 24) * 3 + 1
    torch.testing.assert_close(layer(x), linear(norm(x)), atol=1e-5, rtol=1e-5)
    assert sorted(layer.state_dict()) == ["bias", "layer_norm_bias", "layer_norm_weight", "weight"]


@pytest.mark.gpu
def test_te_layer_norm_linear_matches_torch_path():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (GPU path); this machine has none")
    pytest.importorskip("transformer_engine")
    torch.manual_seed(0)
    ref = LayerNormLinear(128, 256, 1e-6).cuda()
    fused = make_layer_norm_linear(128, 256, 1e-6, "te")
    missing, unexpected = fused.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing)
    x = torch.randn(4, 32, 128, device="cuda")
    torch.testing.assert_close(fused(x), ref(x), atol=2e-3, rtol=2e-3)
