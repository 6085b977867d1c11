"""Device-strict collectives: every tensor handed to ``torch.distributed`` must live on the compute device.

NCCL only moves CUDA tensors: ``ProcessGroupNCCL`` checks each input and output with
``check_gpu_single_tensor`` and fails with "Tensors must be CUDA and dense"
(torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp), while gloo accepts CPU tensors. On a CPU test
machine a tensor created without ``device=`` (``torch.zeros(1)``) lands on the CPU like every other
tensor, so gloo runs the code NCCL rejects. Under :func:`strict_collectives`

- the rank's compute device is ``device`` (the CPU in tests); and
- a tensor made by a factory without ``device=`` lands on ``stray`` (the ``meta`` device by default, through
  ``torch.set_default_device``) -- where it would land on a GPU machine too, *away* from the compute device;
- every tensor passed to a collective or point-to-point call is checked first: one not on ``device`` raises
  :class:`StrayTensorError` naming the call, the argument and the device.

Object collectives (``all_gather_object``, ``broadcast_object_list``) pickle through tensors that torch
itself places on the right device (``_get_object_coll_device``) and are not checked.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.distributed as dist

CHECKED = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
    "broadcast", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single",
    "send", "recv", "isend", "irecv",
)  # fmt: skip


class StrayTensorError(RuntimeError):
    """A collective got a tensor that is not on the compute device (NCCL would reject it)."""


def _tensors(value, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{where}[{i}]")


def _checked(name: str, function, device: torch.device):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        named = [(f"argument {i}", a) for i, a in enumerate(args)] + list(kwargs.items())
        for where, value in named:
            for label, tensor in _tensors(value, where):
                if tensor.device != device:
                    raise StrayTensorError(
                        f"torch.distributed.{name}: {label} is on {tensor.device}, not on the compute "
                        f"device {device} (NCCL accepts only tensors on the rank's GPU)"
                    )
        return function(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def strict_collectives(device: torch.device | str = "cpu", stray: str = "meta"):
    """Check every tensor handed to ``torch.distributed`` inside the block (see the module docstring)."""
    device = torch.device(device)
    originals = {name: getattr(dist, name) for name in CHECKED}
    previous = torch.get_default_device()
    try:
        for name, function in originals.items():
            setattr(dist, name, _checked(name, function, device))
        torch.set_default_device(stray)
        yield
    finally:
        torch.set_default_device(previous)
        for name, function in originals.items():
            setattr(dist, name, function)
