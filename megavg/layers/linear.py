"""Linear layers: Transformer Engine ``te.Linear`` (FP8-capable) or ``torch.nn.Linear``, same parameters.

Both expose ``weight`` [out, in] and ``bias`` [out]; TE adds an ``_extra_state`` entry (FP8 scaling
state) to state dicts, which model folders never store.
"""

from __future__ import annotations

import torch
from torch import nn

from megavg.layers.backends import resolve_linear


def make_linear(in_features: int, out_features: int, backend: str, bias: bool = True) -> nn.Module:
    """A linear layer of the resolved ``backend`` (``te`` or ``torch``; ``auto`` is resolved here)."""
    if resolve_linear(backend) == "torch":
        return nn.Linear(in_features, out_features, bias=bias)
    import transformer_engine.pytorch as te  # GPU path: imported only when chosen

    device = torch.get_default_device()
    device = "meta" if device.type == "meta" else "cuda"
    return te.Linear(
        in_features, out_features, bias=bias, device=device, params_dtype=torch.get_default_dtype()
    )
