"""What every megavg model shares: its args dataclass and the model folder methods."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn


class MegavgModel(nn.Module):
    """Base class of model families; subclasses set ``self.args`` (their args dataclass)."""

    args: object

    def save(self, folder: str | os.PathLike) -> Path:
        """Write this model as a megavg model folder (config.json + safetensors), atomically."""
        from megavg.models.registry import save

        return save(self, folder)
