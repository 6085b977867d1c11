"""Lazy tensors: anything with ``shape``, ``dtype`` and ``contiguous()`` returning the tensor, read or
computed only when a writer or loader asks for it (DeepSpeed's ``zero_to_fp32`` lazy entries, a
safetensors entry of a model folder, a LoRA merge, a dtype cast). Model folders, consolidation, LoRA export
and loading into ZeRO-3 partitions pass them around so no process holds a whole model at once."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


def materialize(value: Any) -> torch.Tensor:
    """A tensor from a tensor or a *lazy tensor*: anything with ``shape``, ``dtype`` and ``contiguous()``
    returning the tensor, such as the entries of DeepSpeed's ``zero_to_fp32`` lazy mode."""
    return value if isinstance(value, torch.Tensor) else value.contiguous()


@dataclasses.dataclass(frozen=True)
class CastTensor:
    """A lazy tensor (:func:`materialize`): ``source`` (a tensor or lazy tensor) cast to ``dtype`` when
    materialised."""

    source: Any
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.source.shape)

    def contiguous(self) -> torch.Tensor:
        return materialize(self.source).to(self.dtype)
