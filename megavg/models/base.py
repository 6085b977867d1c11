"""What every megavg model shares: its args dataclass, the model folder methods and inference casting."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


class MegavgModel(nn.Module):
    """Base class of model families; subclasses set ``self.args`` (their args dataclass).

    ``keep_fp32`` names the parameters that stay float32 when the model is cast for inference (a module
    path prefix such as ``"time_embed"`` or a parameter name such as ``"modulation"``), as diffusers'
    ``_keep_in_fp32_modules`` does: :meth:`cast` and every loader and exporter honour it.
    """

    args: object
    keep_fp32: tuple[str, ...] = ()

    def save(self, folder: str | os.PathLike) -> Path:
        """Write this model as a megavg model folder (config.json + safetensors), atomically."""
        from megavg.models.registry import save

        return save(self, folder)

    @classmethod
    def keeps_fp32(cls, name: str) -> bool:
        """True for a parameter/state-dict key that stays float32 in any inference dtype."""
        return any(name.startswith(p + ".") or name == p or name.endswith("." + p) for p in cls.keep_fp32)

    @classmethod
    def dtype_for(cls, name: str, dtype: torch.dtype) -> torch.dtype:
        """The dtype ``name`` (a floating parameter or buffer) gets when the model is cast to ``dtype``."""
        return torch.float32 if cls.keeps_fp32(name) else dtype

    def cast(self, dtype: torch.dtype | None) -> MegavgModel:
        """Cast floating parameters and buffers to ``dtype`` in place, ``keep_fp32`` ones to float32 (each
        tensor cast once from what it holds: an fp32 weight kept fp32 loses nothing)."""
        if dtype is None:
            return self
        for name, tensor in [*self.named_parameters(), *self.named_buffers()]:
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(self.dtype_for(name, dtype))
        return self
