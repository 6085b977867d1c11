"""Loading weights into a model partitioned by ``deepspeed.zero.Init``: each rank reads only its own part.

How ZeRO-3 partitions one parameter (DeepSpeed's ``partition_parameters``): the tensor is flattened
(``param.ds_numel`` elements), padded to a multiple of the partition group size ``N``, and cut into ``N``
chunks of ``pn = param.partition_numel()`` elements; group rank ``r`` keeps flat elements
``[r * pn, (r + 1) * pn)`` in ``param.ds_tensor`` (the part past ``ds_numel`` is padding)::

    flat weight  |--- rank 0 ---|--- rank 1 ---|--- rank 2 ---|-- rank 3 --pad|

:func:`load_state` writes that range straight from the safetensors slice covering it
(:meth:`megavg.models.registry.StoredTensor.read_flat`), one tensor at a time, so no rank ever holds a
whole tensor it does not own (beyond the one being read) and the rank's peak is its share of the model.
Parameters that are not partitioned (``parallel.zero_init`` off) are read whole, one at a time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from megavg.utils.errors import UserError
from megavg.utils.lazy import materialize


def is_partitioned(param: torch.Tensor) -> bool:
    """Whether ``param`` is a ZeRO-3 parameter (created under ``zero.Init`` or converted by DeepSpeed)."""
    return hasattr(param, "ds_id")


def owned_range(param: nn.Parameter) -> tuple[int, int]:
    """The flat element range ``[start, end)`` of a ZeRO-3 ``param`` kept by this rank (padding left
    out: empty on a rank whose whole chunk is padding)."""
    group = param.ds_process_group
    size = param.partition_numel()
    if size * dist.get_world_size(group=group) != param.ds_numel_aligned:
        raise RuntimeError(f"ZeRO partition of {tuple(param.ds_shape)}: unexpected layout")
    start = size * dist.get_rank(group=group)
    return min(start, param.ds_numel), min(start + size, param.ds_numel)


def write_partition(param: nn.Parameter, stored: Any) -> torch.Tensor:
    """Fill this rank's partition of ZeRO-3 ``param`` from ``stored`` (a :class:`StoredTensor`, or any
    tensor); returns the elements written."""
    if getattr(param.ds_tensor, "final_location", None) == "nvme":
        raise UserError(
            "parallel.zero_init: loading model.init into NVMe-offloaded parameters is unsupported"
        )
    start, end = owned_range(param)
    if isinstance(stored, torch.Tensor):
        piece = stored.detach().reshape(-1)[start:end]
    else:
        piece = stored.read_flat(start, end)
    with torch.no_grad():
        param.ds_tensor[: end - start].copy_(piece)
        param.ds_tensor[end - start :].zero_()  # padding
    return piece


def load_state(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Copy ``state`` (tensors or lazy tensors, the model's exact keys) into ``model``, one tensor at a
    time: partitioned parameters from their slices, others whole.

    Non-finite values raise one :class:`UserError` naming the tensor, on every rank together when the
    model is partitioned (each rank checks only what it read).
    """
    params = dict(model.named_parameters())
    bad = []
    for name, param in params.items():
        if is_partitioned(param):
            piece = write_partition(param, state[name])
        else:
            piece = materialize(state[name])
            with torch.no_grad():
                param.copy_(piece)
        if piece.is_floating_point() and not torch.isfinite(piece).all():
            bad.append(name)
    buffers = {k: materialize(v) for k, v in state.items() if k not in params}
    model.load_state_dict(buffers, strict=False)
    if any(is_partitioned(p) for p in params.values()):
        gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, bad)
        bad = sorted({name for names in gathered for name in names})
    if bad:
        raise UserError(f"{source}: {bad[0]} contains NaN or Inf")


def partition_new(model: nn.Module) -> list[nn.Parameter]:
    """Partition the parameters of a ZeRO-3 ``model`` that are still whole (added after construction,
    e.g. LoRA adapters) the way ``deepspeed.initialize`` would, now; returns them.

    DeepSpeed broadcasts rank 0's values first. No-op when nothing in ``model`` is partitioned.
    """
    params = list(model.parameters())
    anchor = next((p for p in params if is_partitioned(p)), None)
    new = [p for p in params if not is_partitioned(p)]
    if anchor is not None and new:
        anchor.convert_to_zero_parameters(param_list=new)
    return new if anchor is not None else []
