"""Package logger: one format, rank-aware, no handlers added at import time of user code."""

from __future__ import annotations

import logging
import os


def get_logger(name: str = "megavg") -> logging.Logger:
    """Return the megavg logger (configured once, INFO level, rank prefix when distributed)."""
    root = logging.getLogger("megavg")
    if not root.handlers:
        handler = logging.StreamHandler()
        rank = os.environ.get("RANK")
        prefix = f"[rank{rank}] " if rank is not None else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("MEGAVG_LOG_LEVEL", "INFO"))
        root.propagate = False
    return logging.getLogger(name)
