"""Emulated FP8 GEMM (per-tensor scaling, quantise -> dequantise -> float32 matmul) with TE's shape rule.

Mirrored rules:
- ``transformer_engine/pytorch/utils.py: assert_dim_for_fp8_exec`` - "FP8 execution requires the
  product of all dimensions except the last to be divisible by 8 and the last dimension to be divisible
  by 16", checked by ``module/linear.py`` (``_Linear.forward``) on the input and the weight before an
  FP8 GEMM.
- ``transformer_engine/common/gemm/cublaslt_gemm.cu: CanonicalizeGemmInput`` (per-tensor scaling): Hopper
  runs FP8 GEMMs in TN layout only ("Hopper only supports TN GEMMs for FP8"), both operands then hold
  the contraction dimension k contiguously, and ``lda``/``ldb`` (= k) must be multiples of 16 ("Leading
  dimension requirement on A for FP8 GEMM. Caller must pad."). Forward: k = in_features (already checked
  above); data gradient: k = out_features; weight gradient (dW = dY^T X, only for a weight that needs a
  gradient): k = the number of rows, so rows that pass the forward's "divisible by 8" can fail here.

Like TE, the layer saves the FP8 (``float8_e4m3fn``/``float8_e5m2``) copies for backward, so an
activation recompute that runs outside the forward's FP8 context saves tensors of another dtype, which
torch's checkpoint rejects (as it would on a GPU).
"""

from __future__ import annotations

import math

import torch

FP8_MAX = {"E4M3": 448.0, "E5M2": 57344.0}
FP8_DTYPE = {"E4M3": torch.float8_e4m3fn, "E5M2": torch.float8_e5m2}


def assert_dim_for_fp8_exec(*tensors: torch.Tensor) -> None:
    for tensor in tensors:
        assert math.prod(tensor.shape[:-1]) % 8 == 0 and tensor.shape[-1] % 16 == 0, (
            "FP8 execution requires the product of all dimensions except the last to be divisible"
            " by 8 and the last dimension to be divisible by 16, but got tensor with"
            f" dims={list(tensor.size())}"
        )


def check_tn_leading_dim(k: int, operand: str) -> None:
    """The Hopper TN-layout rule of ``CanonicalizeGemmInput`` for a GEMM contracting over ``k``."""
    assert k % 16 == 0, (
        f"Leading dimension requirement on {operand} for FP8 GEMM. Caller must pad. (lda = ldb = k = {k})"
    )


def quantize(t: torch.Tensor, fmt: str, margin: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP8 tensor, scale) with ``t ~= fp8.float() / scale`` (scale from the current amax)."""
    amax = t.detach().abs().amax().float().clamp(min=1e-12)
    scale = FP8_MAX[fmt] / amax / 2**margin
    fp8 = (t.detach().float() * scale).clamp(-FP8_MAX[fmt], FP8_MAX[fmt]).to(FP8_DTYPE[fmt])
    return fp8, scale


def dequantize(fp8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return fp8.float() / scale


class Fp8Gemm(torch.autograd.Function):
    """y = x @ w.T + b with x, w (and dy in backward) through FP8; x [rows, in], w [out, in]."""

    @staticmethod
    def forward(ctx, x, weight, bias, fwd: str, bwd: str, margin: int):
        xq, xs = quantize(x, fwd, margin)
        wq, ws = quantize(weight, fwd, margin)
        out = dequantize(xq, xs) @ dequantize(wq, ws).T  # [rows, out], float32 accumulate
        if bias is not None:
            out = out + bias.float()
        ctx.save_for_backward(xq, xs, wq, ws)
        ctx.meta = (bwd, margin, x.dtype, weight.dtype, bias is not None)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        xq, xs, wq, ws = ctx.saved_tensors
        bwd, margin, x_dtype, w_dtype, has_bias = ctx.meta
        gq, gs = quantize(grad, bwd, margin)
        g = dequantize(gq, gs)  # [rows, out]
        dx = dw = None
        if ctx.needs_input_grad[0]:
            check_tn_leading_dim(g.shape[1], "A")  # dgrad: contracts over out_features
            dx = (g @ dequantize(wq, ws)).to(x_dtype)
        if ctx.needs_input_grad[1]:
            check_tn_leading_dim(g.shape[0], "A")  # wgrad: contracts over the rows
            dw = (g.T @ dequantize(xq, xs)).to(w_dtype)
        db = grad.float().sum(0).to(w_dtype) if has_bias else None
        return dx, dw, db, None, None, None
