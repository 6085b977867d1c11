"""CPU stand-in for flash-attn 2 (test-only): ``flash_attn_func`` / ``flash_attn_varlen_func`` computed
with torch in float32, enforcing the checks of the real kernels' entry points
(``csrc/flash_attn/flash_api.cpp``: ``mha_fwd`` and ``mha_varlen_fwd``):

- "FlashAttention only support fp16 and bf16 data type"; "query and key/value must have the same dtype".
- ``CHECK_DEVICE`` on q, k, v (and cu_seqlens): all on the one (CUDA) device - the CPU stands for it.
- ``mha_fwd``: q [batch, seqlen_q, num_heads, head_size], k/v [batch, seqlen_k, num_heads_k, head_size]
  (``CHECK_SHAPE``); "batch size must be positive"; "FlashAttention forward only supports head dimension
  at most 256"; "Number of heads in key/value must divide number of heads in query".
- ``mha_varlen_fwd``: q [total_q, num_heads, head_size]; "cu_seqlens_q must have dtype int32", contiguous
  cu_seqlens of shape [batch + 1]; "Input tensor must have contiguous last dimension" (the varlen Python
  wrapper passes tensors as given).
The Python wrapper of ``flash_attn_func`` makes the last dimension contiguous (``maybe_contiguous``) and
pads head sizes that are not multiples of 8, so neither is an error there. Not emulated: dropout,
sliding windows, ALiBi, softcap, ``return_attn_probs``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__version__ = "2.8.3+cpu.standin"
STANDIN = True


def _check_dtypes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
    if k.dtype != q.dtype:
        raise RuntimeError("query and key must have the same dtype")
    if v.dtype != q.dtype:
        raise RuntimeError("query and value must have the same dtype")
    if not (q.device == k.device == v.device) or q.device.type == "meta":
        raise RuntimeError("q, k and v must be on the same CUDA device")


def _check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.shape[-1] > 256 or v.shape[-1] > 256:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256")
    if q.shape[-2] % k.shape[-2] or k.shape[-2] != v.shape[-2]:
        raise RuntimeError("Number of heads in key/value must divide number of heads in query")
    if k.shape[-1] != q.shape[-1]:
        raise RuntimeError(f"k must have shape (..., {q.shape[-1]}) (head size of q), got {tuple(k.shape)}")


def _attend(q, k, v, softmax_scale, causal) -> torch.Tensor:
    """q [B, Sq, H, D], k/v [B, Sk, Hk, D] -> [B, Sq, H, Dv] in q's dtype (float32 inside)."""
    groups = q.shape[2] // k.shape[2]
    k, v = (t.repeat_interleave(groups, dim=2) for t in (k, v))
    qt, kt, vt = (t.float().transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2).to(q.dtype)


def _unsupported(dropout_p, window_size, softcap, alibi_slopes, return_attn_probs) -> None:
    if (
        dropout_p
        or tuple(window_size) != (-1, -1)
        or softcap
        or alibi_slopes is not None
        or return_attn_probs
    ):
        raise NotImplementedError("stand-in: dropout/window/softcap/alibi/attn probs are not emulated")


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Softmax attention; q [B, Sq, H, D], k/v [B, Sk, Hk, D] -> [B, Sq, H, D]."""
    _unsupported(dropout_p, window_size, softcap, alibi_slopes, return_attn_probs)
    _check_dtypes(q, k, v)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise RuntimeError("q, k, v must be [batch, seqlen, num_heads, head_size]")
    if q.shape[0] <= 0:
        raise RuntimeError("batch size must be positive")
    if k.shape[0] != q.shape[0] or v.shape[:2] != k.shape[:2]:
        raise RuntimeError(f"k/v must have shape ({q.shape[0]}, seqlen_k, num_heads_k, head_size)")
    _check_heads(q, k, v)
    return _attend(q, k, v, softmax_scale, causal)


def _check_cu_seqlens(name: str, cu: torch.Tensor, q: torch.Tensor, batch: int, total: int) -> None:
    if cu.dtype != torch.int32:
        raise RuntimeError(f"{name} must have dtype int32")
    if cu.device != q.device:
        raise RuntimeError(f"{name} must be on CUDA")
    if not cu.is_contiguous():
        raise RuntimeError(f"{name} must be contiguous")
    if cu.shape != (batch + 1,) or int(cu[-1]) != total:
        raise RuntimeError(f"{name} must have shape ({batch + 1},) and end at the total length {total}")


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """Packed sequences: q [total_q, H, D], k/v [total_k, Hk, D], cu_seqlens int32 [batch + 1]."""
    _unsupported(dropout_p, window_size, softcap, alibi_slopes, return_attn_probs)
    if block_table is not None:
        raise NotImplementedError("stand-in: paged KV is not emulated")
    _check_dtypes(q, k, v)
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise RuntimeError("varlen q, k, v must be [total, num_heads, head_size]")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise RuntimeError("Input tensor must have contiguous last dimension")
    batch = cu_seqlens_q.numel() - 1
    if batch <= 0:
        raise RuntimeError("batch size must be positive")
    _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q, batch, q.shape[0])
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, q, batch, k.shape[0])
    _check_heads(q, k, v)
    outs = []
    for i in range(batch):
        qs, qe, ks, ke = (
            int(x) for x in (cu_seqlens_q[i], cu_seqlens_q[i + 1], cu_seqlens_k[i], cu_seqlens_k[i + 1])
        )
        if qe - qs > max_seqlen_q or ke - ks > max_seqlen_k:
            raise RuntimeError("a sequence is longer than max_seqlen_q / max_seqlen_k")
        outs.append(_attend(q[None, qs:qe], k[None, ks:ke], v[None, ks:ke], softmax_scale, causal)[0])
    return torch.cat(outs, dim=0)
