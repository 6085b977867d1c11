"""Our side of Transformer Engine FP8: which blocks run in FP8, the recipe, the autocast, checkpoint state.

The decisions (block selection, recipe settings, what happens to TE's saved scaling state) are plain
Python and tested on CPU; only :func:`build_recipe` and :func:`fp8_autocast` touch TE (GPU path).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from megavg.layers.config import Fp8Config

EXTRA_STATE_SUFFIX = "_extra_state"
FP8_TOKEN_MULTIPLE = 16  # FP8 GEMMs need row counts divisible by 8-16: token sequences are padded to it
# Rows (tokens) of an FP8 GEMM input are padded to this. Forward: TE's assert_dim_for_fp8_exec
# (transformer_engine/pytorch/utils.py) wants the product of the leading dimensions divisible by 8. Backward:
# Hopper runs FP8 GEMMs in TN layout only, so the weight-gradient GEMM dW = dY^T X contracts over the rows
# with both operands transposed, and CanonicalizeGemmInput (transformer_engine/common/gemm/
# cublaslt_gemm.cu) checks lda % 16 == 0 and ldb % 16 == 0 there ("Leading dimension requirement on A
# for FP8 GEMM. Caller must pad."): rows must be a multiple of 16 for training.
FP8_ROW_MULTIPLE = 16


def fp8_blocks(num_blocks: int, cfg: Fp8Config) -> list[bool]:
    """Per transformer block: run it under FP8? (the first/last ``bf16_*_blocks`` stay in bf16)."""
    if not cfg.enabled:
        return [False] * num_blocks
    first, last = cfg.bf16_first_blocks, num_blocks - cfg.bf16_last_blocks
    return [first <= i < last for i in range(num_blocks)]


def recipe_kwargs(cfg: Fp8Config) -> dict[str, Any]:
    """Constructor arguments of the TE recipe class for ``cfg`` (format given by name)."""
    fmt = "HYBRID" if cfg.format == "hybrid" else "E4M3"
    if cfg.recipe == "current":
        return {"fp8_format": fmt}
    return {
        "fp8_format": fmt,
        "margin": cfg.margin,
        "amax_history_len": cfg.amax_history_len,
        "amax_compute_algo": cfg.amax_compute_algo,
    }


def build_recipe(cfg: Fp8Config) -> Any:
    """The TE recipe object (DelayedScaling or Float8CurrentScaling). GPU path."""
    from transformer_engine.common import recipe as te_recipe

    kwargs = recipe_kwargs(cfg)
    kwargs["fp8_format"] = getattr(te_recipe.Format, kwargs["fp8_format"])
    cls = te_recipe.Float8CurrentScaling if cfg.recipe == "current" else te_recipe.DelayedScaling
    return cls(**kwargs)


@contextlib.contextmanager
def fp8_autocast(enabled: bool, cfg: Fp8Config, group: Any = None) -> Iterator[None]:
    """TE autocast around FP8 regions (``te.autocast``; ``te.fp8_autocast`` on TE < 2.9).

    ``group`` is the amax reduction group: all data- and sequence-parallel ranks. A no-op when disabled,
    so the CPU path never imports TE.
    """
    if not enabled:
        yield
        return
    import transformer_engine.pytorch as te

    recipe = build_recipe(cfg)
    if hasattr(te, "autocast"):
        ctx = te.autocast(enabled=True, recipe=recipe, amax_reduction_group=group)
    else:
        ctx = te.fp8_autocast(enabled=True, fp8_recipe=recipe, fp8_group=group)
    with ctx:
        yield


def split_extra_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Separate TE's per-module FP8 scaling state (``*._extra_state``) from the weights."""
    weights = {k: v for k, v in state.items() if not k.endswith(EXTRA_STATE_SUFFIX)}
    extra = {k: v for k, v in state.items() if k.endswith(EXTRA_STATE_SUFFIX)}
    return weights, extra


def state_for_load(state: dict[str, Any], cfg: Fp8Config) -> dict[str, Any]:
    """The part of a checkpoint's state dict to load into a model running with ``cfg``.

    FP8 scaling state is kept only for a delayed-scaling run that asks to keep it (its amax history is
    then resumed); otherwise it is dropped, so TE starts from fresh scales. Exported weights never hold it.
    """
    weights, extra = split_extra_state(state)
    if cfg.enabled and cfg.recipe == "delayed" and not cfg.reset_amax_on_load:
        return {**weights, **extra}
    return weights


def fp8_config_of(model: torch.nn.Module) -> Fp8Config | None:
    """The FP8 settings a model was built with (``model.args.layers.fp8``), or None for a model without."""
    layers = getattr(getattr(model, "args", None), "layers", None)
    return getattr(layers, "fp8", None)


def load_module_state(src: dict[str, Any], dst: torch.nn.Module, strict: bool) -> None:
    """Load a training checkpoint's module state ``src`` into ``dst``, through :func:`state_for_load` for
    ``dst``'s FP8 settings (``reset_amax_on_load``). The checkpointer hands it to DeepSpeed's
    ``load_checkpoint`` as ``custom_load_fn`` (called as ``fn(src=..., dst=...)``). ``strict``: no key may be
    missing or unexpected, FP8 scaling state aside (left at TE's fresh values when dropped)."""
    cfg = fp8_config_of(dst)
    result = dst.load_state_dict(state_for_load(src, cfg) if cfg is not None else src, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(EXTRA_STATE_SUFFIX)]
    if strict and (missing or result.unexpected_keys):
        unexpected = result.unexpected_keys[:5]
        raise RuntimeError(f"checkpoint module state: missing {missing[:5]}, unexpected {unexpected}")
