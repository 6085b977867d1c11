"""``--compile`` (:func:`regional_compile`): a Wan block traces as one graph on the torch/SDPA path, and
Transformer Engine linears (kept out of dynamo by TE) are refused with one clear error."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

import megavg.models
from megavg.infer.sampling import regional_compile
from megavg.layers import LayerConfig
from megavg.utils.errors import UserError


def block_inputs(model):
    """The positional arguments the model's first block receives in a forward."""
    seen = {}
    hook = model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.setdefault("args", args))
    args = model.args
    with torch.no_grad():
        model(
            torch.randn(1, args.in_channels, 2, 4, 4), torch.tensor([300.0]), torch.randn(1, 5, args.text_dim)
        )
    hook.remove()
    return seen["args"]


def test_block_compiles_to_one_graph():
    """No graph break per attention call (the backend resolution is a trace-time constant)."""
    torch.manual_seed(0)
    model = megavg.models.build("wan-tiny-t2v").eval()
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model.blocks[0])(*block_inputs(model))
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.usefixtures("standins")
def test_compile_refuses_transformer_engine_linears():
    model = megavg.models.build("wan-tiny-t2v", layers=LayerConfig(linear="te"))
    with pytest.raises(UserError, match="--compile: this DiT runs Transformer Engine linears"):
        with regional_compile(model, True):
            pass
    with regional_compile(model, False):  # without --compile nothing is checked
        pass
