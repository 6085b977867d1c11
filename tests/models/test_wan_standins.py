"""The Wan DiT on the GPU layer paths (TE linears, FP8, flash-attn, activation checkpointing, bf16) under
the strict CPU stand-ins (tests/standins): what each defect found by them looked like, now fixed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import megavg.models
from megavg.layers import Fp8Config, LayerConfig
from megavg.layers.linear import padded_rows
from megavg.tasks.adapt_lora import inject_lora, lora_targets

pytestmark = pytest.mark.usefixtures("standins")
FP8_EVERY_BLOCK = Fp8Config(enabled=True, bf16_first_blocks=0, bf16_last_blocks=0)
EXCLUDE = ["cross_attn", "text_embed", "head"]


def build(preset="wan-tiny-student-t2v", dtype=torch.bfloat16, **layers):
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return megavg.models.build(preset, layers=LayerConfig(**layers))
    finally:
        torch.set_default_dtype(default)


def inputs(i2v=False, text_len=5, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 20 if i2v else 8, 2, 4, 4, generator=g, dtype=dtype)
    text = torch.randn(1, text_len, 32, generator=g, dtype=dtype)
    image = torch.randn(1, 257, 24, generator=g, dtype=dtype) if i2v else None
    return x, torch.tensor([300.0]), text, image


def test_lora_targets_do_not_depend_on_the_linear_backend():
    te_model = build(linear="te")
    torch_model = megavg.models.build("wan-tiny-student-t2v")
    targets = lora_targets(te_model, EXCLUDE)
    assert targets == lora_targets(torch_model, EXCLUDE)
    assert "blocks.0.self_attn.q" in targets and "blocks.1.ffn.fc2" in targets
    lora = inject_lora(te_model, targets, rank=4, alpha=8)  # peft's TE wrapper (tuners/lora/te.py)
    wrapped = lora.blocks[0].self_attn.q
    assert type(wrapped).__module__ == "peft.tuners.lora.te" and hasattr(wrapped, "lora_A")
    x, t, text, _ = inputs()
    with torch.no_grad():  # B = 0 at init: the wrapped model computes the base model
        torch.testing.assert_close(lora(x, t, text), build(linear="te")(x, t, text))


@pytest.mark.parametrize("i2v", [False, True])
def test_fp8_rows_of_text_and_image_tokens_are_padded(i2v):
    preset = "wan-tiny-student-i2v" if i2v else "wan-tiny-student-t2v"
    model = build(preset, linear="te", attention="flash", fp8=FP8_EVERY_BLOCK)
    x, t, text, image = inputs(i2v, text_len=5)  # 5 text rows, 257 CLIP rows: not multiples of 8
    out = model(x, t, text, image)
    out.float().square().mean().backward()
    assert out.shape == (1, 8, 2, 4, 4) and torch.isfinite(out).all()
    layer, rows = model.blocks[0].cross_attn.k, torch.randn(1, 5, 64, dtype=torch.bfloat16)
    with torch.no_grad():  # padding rows never reach the kept rows
        torch.testing.assert_close(
            padded_rows(layer, rows), nn.functional.linear(rows, layer.weight, layer.bias)
        )


def test_checkpointed_fp8_blocks_recompute_in_fp8():
    """Same gradients with and without activation checkpointing (recompute inside FP8, as TE's own)."""
    grads = []
    for ckpt in (False, True):
        model = build(linear="te", attention="flash", fp8=FP8_EVERY_BLOCK)
        model.args.grad_checkpointing = ckpt
        x, t, text, _ = inputs(text_len=8)
        model(x, t, text).float().square().mean().backward()
        grads.append({n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=0, msg=name)


def test_delayed_scaling_reduces_amaxes_once_per_forward():
    """TE's delayed recipe all-reduces the amaxes when the outermost autocast exits: one FP8 region over
    the block stack, not one per block (the stand-in counts the reductions)."""
    from transformer_engine.pytorch import FP8GlobalStateManager

    delayed = Fp8Config(enabled=True, recipe="delayed", bf16_first_blocks=0, bf16_last_blocks=0)
    model = build(linear="te", attention="flash", fp8=delayed)
    assert len(model.blocks) > 1
    x, t, text, _ = inputs(text_len=8)
    before = FP8GlobalStateManager.AMAX_REDUCTIONS
    model(x, t, text)
    assert FP8GlobalStateManager.AMAX_REDUCTIONS - before == 1
    with torch.no_grad():  # inference: TE reduces nothing
        model(x, t, text)
    assert FP8GlobalStateManager.AMAX_REDUCTIONS - before == 1
