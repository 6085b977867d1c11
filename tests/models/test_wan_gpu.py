"""GPU paths of the Wan DiT (Transformer Engine linears/RMSNorm, FP8, flash-attn). Run only with CUDA.

Written for H100 (FP8 needs compute capability >= 8.9); not run on the CPU CI machine.
"""

from __future__ import annotations

import pytest
import torch

from megavg.layers import Fp8Config, LayerConfig
from megavg.models import build
from tests.models.wan_inputs import inputs

pytestmark = pytest.mark.gpu

# dims multiple of 16 and token counts multiple of 16, as FP8 GEMMs require
GPU_TINY = dict(dim=128, num_heads=2, ffn_dim=256, num_layers=4, text_dim=64, freq_dim=64, in_channels=16)


def _pair(layers: LayerConfig):
    torch.manual_seed(0)
    ref = build("wan-tiny-t2v", **GPU_TINY, layers=LayerConfig(linear="torch", attention="sdpa"))
    ref = ref.cuda().to(torch.bfloat16)
    model = build("wan-tiny-t2v", **GPU_TINY, layers=layers).cuda().to(torch.bfloat16)
    missing, unexpected = model.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing)
    x = [t.cuda() if t is not None else None for t in inputs(ref.args, grid=(2, 4, 4), text_len=16)]
    x[0], x[2] = x[0].bfloat16(), x[2].bfloat16()
    return ref, model, x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("attention_backend", ["flash", "sdpa"])
def test_te_bf16_matches_torch(attention_backend):
    pytest.importorskip("transformer_engine")
    if attention_backend == "flash":
        pytest.importorskip("flash_attn")
    ref, model, x = _pair(LayerConfig(linear="te", attention=attention_backend))
    import transformer_engine.pytorch as te

    assert isinstance(model.blocks[0].self_attn.q, te.Linear)
    assert isinstance(model.blocks[0].cross_attn.q, te.LayerNormLinear)  # te's fused norm + query
    assert _rel(model(*x), ref(*x)) < 2e-2


def test_fp8_current_scaling_trains():
    pytest.importorskip("transformer_engine")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9")
    fp8 = Fp8Config(enabled=True, recipe="current", bf16_first_blocks=1, bf16_last_blocks=1)
    ref, model, x = _pair(LayerConfig(linear="te", fp8=fp8))
    out = model(*x)
    assert _rel(out, ref(*x)) < 1e-1
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _fp8_every_block() -> LayerConfig:
    return LayerConfig(linear="te", fp8=Fp8Config(enabled=True, bf16_first_blocks=0, bf16_last_blocks=0))


def _grads(model, x) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(*x).float().square().mean().backward()
    return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fp8_with_unpadded_text_rows_and_checkpointing():
    """5 text rows (not a multiple of 8) under FP8, and TE's checkpoint: the same gradients as without
    recompute (tolerance 1e-2 relative: FP8 scales are per call, the recompute repeats them)."""
    pytest.importorskip("transformer_engine")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9")
    ref, model, x = _pair(_fp8_every_block())
    x[2] = x[2][:, :5]
    plain = _grads(model, x)
    model.args.grad_checkpointing = True
    for name, grad in _grads(model, x).items():
        assert _rel(grad, plain[name]) < 1e-2, name


def test_lora_on_te_matches_lora_on_torch():
    """peft's TE wrapper on megavg's TE layers: the same targets and, with the same adapter weights, the
    same output as the torch model's LoRA (bf16 GEMMs: 2e-2 relative)."""
    pytest.importorskip("transformer_engine")
    from megavg.tasks.adapt_lora import inject_lora, lora_targets

    ref, model, x = _pair(LayerConfig(linear="te"))
    exclude = ["cross_attn", "text_embed", "head"]
    targets = lora_targets(ref, exclude)
    assert lora_targets(model, exclude) == targets
    ref, model = (inject_lora(m, targets, rank=4, alpha=8) for m in (ref, model))
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.1)
    lora = {k: v for k, v in ref.state_dict().items() if ".lora_" in k}
    model.load_state_dict(lora, strict=False)
    model.to(torch.bfloat16)
    assert _rel(model(*x), ref(*x)) < 2e-2
