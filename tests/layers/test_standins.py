"""The CPU stand-ins of Transformer Engine and flash-attn (tests/standins) enforce the real libraries'
rules (each test breaks one) and compute what the real layers compute (against plain torch formulas)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

pytestmark = pytest.mark.usefixtures("standins")


def _te():
    import transformer_engine.pytorch as te
    from transformer_engine.common import recipe

    return te, recipe


def test_te_linear_is_a_linear_and_fp8_rounds_like_e4m3():
    te, recipe = _te()
    layer = te.Linear(32, 16, device="cuda")
    x = torch.randn(4, 8, 32)
    exact = F.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(layer(x), exact)
    with te.autocast(recipe=recipe.Float8CurrentScaling()):
        fp8 = layer(x)
    error = ((fp8 - exact).norm() / exact.norm()).item()
    assert 1e-4 < error < 0.1  # E4M3 has 3 mantissa bits: a few percent, never exact
    assert "_extra_state" in layer.state_dict()


@pytest.mark.parametrize(("rows", "in_features", "ok"), [(8, 32, True), (5, 32, False), (8, 24, False)])
def test_fp8_gemm_shape_rule(rows, in_features, ok):
    te, _ = _te()
    layer = te.Linear(in_features, 16, device="cuda")
    x = torch.randn(rows, in_features)
    layer(x)  # outside FP8 any shape runs
    with te.autocast():
        if ok:
            layer(x)
        else:
            with pytest.raises(
                AssertionError, match="divisible by 8 and the last dimension to be divisible by 16"
            ):
                layer(x)


@pytest.mark.parametrize(("rows", "frozen", "ok"), [(32, False, True), (24, False, False), (24, True, True)])
def test_fp8_weight_gradient_needs_rows_multiple_of_16(rows, frozen, ok):
    """Hopper's TN-only FP8 GEMMs: the wgrad GEMM contracts over the rows (lda % 16, cublaslt_gemm.cu);
    24 rows pass the forward's "divisible by 8" and fail in backward, unless the weight is frozen."""
    te, _ = _te()
    layer = te.Linear(32, 16, device="cuda")
    layer.weight.requires_grad_(not frozen)
    x = torch.randn(rows, 32, requires_grad=True)
    with te.autocast():
        y = layer(x)
    if ok:
        y.sum().backward()
    else:
        with pytest.raises(AssertionError, match="Leading dimension requirement on A for FP8 GEMM"):
            y.sum().backward()


def test_te_dtype_and_device_rules():
    te, _ = _te()
    layer = te.Linear(16, 16, params_dtype=torch.bfloat16, device="cuda")
    with pytest.raises(AssertionError, match="Data types for parameters must match"):
        layer(torch.randn(2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the stand-in's device: autocast decides
        assert layer(torch.randn(2, 16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="compute on CUDA"):
        te.RMSNorm(16, device="cpu")
    assert te.LayerNormLinear(16, 8, device="meta").weight.is_meta


def test_autocast_state_is_restored_and_fp8_autocast_is_deprecated():
    te, recipe = _te()
    state = te.FP8GlobalStateManager
    delayed = recipe.DelayedScaling(fp8_format=recipe.Format.E4M3)
    with te.autocast(recipe=delayed):
        assert state.is_fp8_enabled() and state.get_fp8_recipe() is delayed
        with te.autocast(enabled=False):
            assert not state.is_fp8_enabled()
        assert state.is_fp8_enabled()
    assert not state.is_fp8_enabled()
    with pytest.raises(RuntimeError), te.autocast():
        raise RuntimeError
    assert not state.is_fp8_enabled()
    with warnings.catch_warnings(record=True) as caught, te.fp8_autocast(fp8_recipe=delayed):
        warnings.simplefilter("always")
        assert state.get_fp8_recipe() is delayed
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    with pytest.raises(AssertionError, match="E5M2"):
        recipe.Float8CurrentScaling(fp8_format=recipe.Format.E5M2)


def _fp8_grads(te, layer, x, checkpoint):
    with te.autocast():
        y = checkpoint(layer, x) if checkpoint else layer(x)
    y.square().sum().backward()  # backward (and any recompute) outside the autocast, as in training
    grads = (x.grad.clone(), layer.weight.grad.clone())
    x.grad = layer.weight.grad = None
    return grads


def test_te_checkpoint_recomputes_in_the_forward_fp8_context():
    te, _ = _te()
    layer = te.Linear(32, 16, device="cuda")
    x = torch.randn(16, 32, requires_grad=True)  # FP8 backward: rows % 16 (the wgrad GEMM's rule)
    plain = _fp8_grads(te, layer, x, None)
    for reentrant in (False, True):
        ckpt = _fp8_grads(te, layer, x, lambda f, a, r=reentrant: te.checkpoint(f, a, use_reentrant=r))
        torch.testing.assert_close(ckpt, plain, rtol=0, atol=0)
    with pytest.raises(torch.utils.checkpoint.CheckpointError):  # torch's recomputes outside FP8
        _fp8_grads(te, layer, x, lambda f, a: torch.utils.checkpoint.checkpoint(f, a, use_reentrant=False))
    with pytest.raises(TypeError, match="save_for_backward"):
        te.checkpoint(lambda a, pair: a, x, (x, x))  # reentrant: tensor arguments only


def _qkv(b=2, sq=5, sk=7, h=4, d=16, dtype=torch.bfloat16):
    return (
        torch.randn(b, sq, h, d, dtype=dtype),
        torch.randn(b, sk, h, d, dtype=dtype),
        torch.randn(b, sk, h, d, dtype=dtype),
    )


def test_flash_attn_func_is_softmax_attention_on_bshd():
    from flash_attn import flash_attn_func

    q, k, v = _qkv()
    ref = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / 4.0, dim=-1)
    ref = torch.einsum("bhqk,bkhd->bqhd", ref, v.float())
    out = flash_attn_func(q, k, v)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda q, k, v: (q.float(), k.float(), v.float()), "only support fp16 and bf16"),
        (lambda q, k, v: (q, k.half(), v), "query and key must have the same dtype"),
        (lambda q, k, v: (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)), "heads|k/v must"),
        (lambda q, k, v: (q[:1], k, v), "k/v must have shape"),
        (
            lambda q, k, v: (q.repeat(1, 1, 1, 17), k.repeat(1, 1, 1, 17), v.repeat(1, 1, 1, 17)),
            "at most 256",
        ),
    ],
)
def test_flash_attn_func_rules(change, message):
    from flash_attn import flash_attn_func

    with pytest.raises(RuntimeError, match=message):
        flash_attn_func(*change(*_qkv()))


def test_flash_attn_varlen_rules_and_packing():
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    q, k, v = _qkv(b=1, sq=6, sk=6)
    packed = [t[0] for t in (q, k, v)]  # [total, H, D]: two sequences of 2 and 4 tokens
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    out = flash_attn_varlen_func(*packed, cu, cu, 4, 4)
    for s, e in ((0, 2), (2, 6)):
        torch.testing.assert_close(out[s:e], flash_attn_func(q[:, s:e], k[:, s:e], v[:, s:e])[0])
    with pytest.raises(RuntimeError, match="cu_seqlens_q must have dtype int32"):
        flash_attn_varlen_func(*packed, cu.long(), cu, 4, 4)
    strided = torch.randn(6, 4, 32, dtype=torch.bfloat16)[..., ::2]
    with pytest.raises(RuntimeError, match="contiguous last dimension"):
        flash_attn_varlen_func(strided, *packed[1:], cu, cu, 4, 4)
