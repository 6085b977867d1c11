"""``te.Linear``, ``te.LayerNormLinear``, ``te.RMSNorm`` on the CPU, with the real modules' rules.

Mirrored rules (TE ``transformer_engine/pytorch/module/``):
- Parameters live on ``device`` (default ``"cuda"``; ``"meta"`` allowed for deferred init). The CPU
  stands for CUDA here; an explicit ``device="cpu"`` is refused, as real TE computes only on CUDA.
- ``params_dtype`` defaults to ``torch.get_default_dtype()``.
- ``base.py: set_activation_dtype``: outside ``torch.autocast`` the input dtype must equal every
  parameter's dtype ("Data types for parameters must match when outside of autocasted region").
- ``linear.py``: the input's last dimension must equal ``in_features``; under FP8 the input and the
  weight pass ``assert_dim_for_fp8_exec`` (see ``gemm.py``).
- ``get_extra_state``/``set_extra_state``: every TE module adds ``<name>._extra_state`` to its state dict
  (FP8 scaling metadata; an empty tensor before any FP8 step).
- Default ``init_method``: normal(0, 0.023) for weights (``utils.py: get_default_init_method``), zero
  biases; LayerNorm/RMSNorm gammas one, betas zero.
"""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from torch import nn

from transformer_engine.pytorch.fp8 import FP8GlobalStateManager
from transformer_engine.pytorch.gemm import Fp8Gemm, assert_dim_for_fp8_exec


def _device(device) -> torch.device:
    kind = torch.device(device).type
    if kind == "meta":
        return torch.device("meta")
    if kind != "cuda":
        raise ValueError(f"Transformer Engine modules compute on CUDA, got device={device!r}")
    return torch.device("cpu")  # this stand-in's "CUDA"


class TransformerEngineBaseModule(nn.Module):
    """Shared input checks and FP8 bookkeeping of the stand-in modules."""

    def _init_base(self, device, params_dtype) -> tuple[torch.device, torch.dtype]:
        self.activation_dtype = None
        self.fp8_steps = 0  # GEMMs run under FP8 (what the extra state records here)
        return _device(device), params_dtype or torch.get_default_dtype()

    def _activation_dtype(self, inp: torch.Tensor) -> torch.dtype:
        if torch.is_autocast_enabled("cpu"):  # torch.autocast on this stand-in's device
            return torch.get_autocast_dtype("cpu")
        for name, param in self.named_parameters():
            assert inp.dtype == param.dtype, (
                "Data types for parameters must match when outside of autocasted region. "
                f" Found input dtype: {inp.dtype} and {name!r} dtype: {param.dtype}"
            )
        return inp.dtype

    def _check_device(self, inp: torch.Tensor) -> None:
        weight = next(self.parameters())
        if inp.device != weight.device:
            raise RuntimeError(f"Expected all tensors on one device, got input on {inp.device}")

    def _gemm_rows(self, inp: torch.Tensor) -> torch.Tensor:
        """The checked input of a GEMM module as [rows, in_features] in the activation dtype."""
        self._check_device(inp)
        assert inp.shape[-1] == self.in_features, "GEMM not possible"
        return inp.to(self._activation_dtype(inp)).reshape(-1, self.in_features)

    def _gemm(self, x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """[rows, in] -> [rows, out], in FP8 inside ``autocast(enabled=True)``."""
        if not FP8GlobalStateManager.is_fp8_enabled():
            return F.linear(x2d, weight.to(x2d.dtype), None if bias is None else bias.to(x2d.dtype))
        assert_dim_for_fp8_exec(x2d, weight)
        recipe = FP8GlobalStateManager.get_fp8_recipe()
        fmt = recipe.fp8_format
        self.fp8_steps += 1
        FP8GlobalStateManager.record_fp8_gemm()
        bias = None if bias is None else bias.to(x2d.dtype)
        return Fp8Gemm.apply(
            x2d, weight.to(x2d.dtype), bias, fmt.forward, fmt.backward, getattr(recipe, "margin", 0)
        )

    def get_extra_state(self) -> torch.Tensor:
        if not self.fp8_steps:
            return torch.empty(0, dtype=torch.uint8)
        buffer = io.BytesIO()
        torch.save({"fp8_steps": self.fp8_steps}, buffer)
        return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)

    def set_extra_state(self, state) -> None:
        if state is None or (isinstance(state, torch.Tensor) and state.numel() == 0):
            return
        data = state.numpy().tobytes() if isinstance(state, torch.Tensor) else state.getvalue()
        self.fp8_steps = torch.load(io.BytesIO(data))["fp8_steps"]


def _weight(out_features: int, in_features: int, device, dtype) -> nn.Parameter:
    weight = torch.empty(out_features, in_features, device=device, dtype=dtype)
    if device.type != "meta":
        nn.init.normal_(weight, 0.0, 0.023)
    return nn.Parameter(weight)


def _bias(out_features: int, bias: bool, device, dtype) -> nn.Parameter | None:
    return nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None


class Linear(TransformerEngineBaseModule):
    """y = x W^T + b; ``weight`` [out, in], ``bias`` [out]."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        sequence_parallel: bool = False,
        fuse_wgrad_accumulation: bool = False,
        tp_group=None,
        tp_size: int = 1,
        get_rng_state_tracker=None,
        init_method=None,
        bias: bool = True,
        return_bias: bool = False,
        params_dtype: torch.dtype | None = None,
        parallel_mode: str | None = None,
        device="cuda",
        name: str | None = None,
    ):
        super().__init__()
        device, dtype = self._init_base(device, params_dtype)
        if tp_size != 1 or parallel_mode is not None or return_bias:
            raise NotImplementedError("stand-in: tensor parallelism / return_bias are not emulated")
        self.in_features, self.out_features = in_features, out_features
        self.weight = _weight(out_features, in_features, device, dtype)
        self.bias = _bias(out_features, bias, device, dtype)

    def forward(self, inp: torch.Tensor, is_first_microbatch: bool | None = None) -> torch.Tensor:
        x = self._gemm_rows(inp)
        return self._gemm(x, self.weight, self.bias).reshape(*inp.shape[:-1], self.out_features)


def _normalize(x: torch.Tensor, kind: str, weight, bias, eps: float) -> torch.Tensor:
    """LayerNorm / RMSNorm in float32, as TE's kernels compute it; returns x's dtype."""
    x32 = x.float()
    if kind == "LayerNorm":
        out = F.layer_norm(x32, (x.shape[-1],), weight.float(), bias.float(), eps)
    else:
        out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return out.to(x.dtype)


class LayerNormLinear(TransformerEngineBaseModule):
    """linear(norm(x)); ``layer_norm_weight``/``layer_norm_bias`` [in], ``weight`` [out, in], ``bias``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        eps: float = 1e-5,
        sequence_parallel: bool = False,
        fuse_wgrad_accumulation: bool = False,
        tp_group=None,
        tp_size: int = 1,
        get_rng_state_tracker=None,
        init_method=None,
        bias: bool = True,
        normalization: str = "LayerNorm",
        return_bias: bool = False,
        params_dtype: torch.dtype | None = None,
        return_layernorm_output: bool = False,
        parallel_mode: str | None = None,
        zero_centered_gamma: bool = False,
        device="cuda",
        name: str | None = None,
    ):
        super().__init__()
        device, dtype = self._init_base(device, params_dtype)
        assert normalization in ("LayerNorm", "RMSNorm"), "Unsupported normalization type!"
        if tp_size != 1 or parallel_mode is not None or return_bias or return_layernorm_output:
            raise NotImplementedError("stand-in: tensor parallelism / extra outputs are not emulated")
        if zero_centered_gamma:
            raise NotImplementedError("stand-in: zero_centered_gamma is not emulated")
        self.in_features, self.out_features, self.eps, self.normalization = (
            in_features,
            out_features,
            eps,
            normalization,
        )
        self.layer_norm_weight = nn.Parameter(torch.ones(in_features, device=device, dtype=dtype))
        if normalization == "LayerNorm":
            self.layer_norm_bias = nn.Parameter(torch.zeros(in_features, device=device, dtype=dtype))
        else:
            self.layer_norm_bias = None
        self.weight = _weight(out_features, in_features, device, dtype)
        self.bias = _bias(out_features, bias, device, dtype)

    def forward(self, inp: torch.Tensor, is_first_microbatch: bool | None = None) -> torch.Tensor:
        x = self._gemm_rows(inp)
        h = _normalize(x, self.normalization, self.layer_norm_weight, self.layer_norm_bias, self.eps)
        return self._gemm(h, self.weight, self.bias).reshape(*inp.shape[:-1], self.out_features)


class RMSNorm(TransformerEngineBaseModule):
    """x / rms(x) * weight over the last dimension (float32 inside, output in the input dtype)."""

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        sequence_parallel: bool | None = None,
        params_dtype: torch.dtype | None = None,
        zero_centered_gamma: bool = False,
        device="cuda",
    ):
        super().__init__()
        device, dtype = self._init_base(device, params_dtype)
        if zero_centered_gamma:
            raise NotImplementedError("stand-in: zero_centered_gamma is not emulated")
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.weight = nn.Parameter(torch.ones(shape, device=device, dtype=dtype))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        self._check_device(inp)
        assert tuple(inp.shape[-len(self.normalized_shape) :]) == self.normalized_shape, "Norm shape mismatch"
        x = inp.to(self._activation_dtype(inp))
        return _normalize(x, "RMSNorm", self.weight, None, self.eps)


class LayerNormMLP(TransformerEngineBaseModule):
    """Present so ``isinstance`` checks (peft's TE dispatch) work; megavg never builds one."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("stand-in: LayerNormMLP is not emulated (megavg does not use it)")


__all__ = ["LayerNormLinear", "LayerNormMLP", "Linear", "RMSNorm"]
