"""Wan-2.1 DiT family: ``megavg.models.build("wan2.1-t2v-14b")`` etc. (see :data:`PRESETS`)."""

from megavg.models.wan.args import PRESETS, Args
from megavg.models.wan.model import Model

FAMILY = "wan"

__all__ = ["FAMILY", "PRESETS", "Args", "Model"]
