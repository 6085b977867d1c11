"""Put the CPU stand-ins of Transformer Engine and flash-attn (tests/standins, docs/gpu.md) in front of a
process: in this one (:func:`use_standins`, the ``standins`` fixture) or in a child (:func:`standin_env`).

A child inherits them through PYTHONPATH, so torchrun/deepspeed workers and peft's own
``find_spec("transformer_engine")`` see them; ``MEGAVG_CPU_STANDINS=1`` lets megavg's backend resolution
treat them as usable without CUDA (``megavg.layers.backends``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from megavg.layers.backends import STANDINS_ENV

STANDINS = Path(__file__).resolve().parent / "standins"
LIBRARIES = ("transformer_engine", "flash_attn")


def standin_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the stand-ins first on PYTHONPATH and enabled."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(STANDINS), env.get("PYTHONPATH", "")) if p)
    env[STANDINS_ENV] = "1"
    return env


def _forget_libraries() -> None:
    from megavg.layers import backends
    from megavg.layers.linear import te_layer_classes

    for name in [m for m in sys.modules if m.split(".")[0] in LIBRARIES]:
        del sys.modules[name]
    te_layer_classes.cache_clear()  # its classes subclass the module objects just forgotten
    backends.clear_cache()  # which libraries import depends on sys.path


def _redetect_in_peft(present: bool) -> None:
    """Redo what peft decides when first imported (a fresh process does it with the stand-ins present):
    ``peft.import_utils.is_te_pytorch_available`` (cached) and ``peft.tuners.lora.te``'s module-level
    ``import transformer_engine as te`` that its ``dispatch_transformer_engine`` uses."""
    if "peft" not in sys.modules:
        return  # peft, when imported later, detects the stand-ins itself
    import peft.import_utils
    import peft.tuners.lora.te as lora_te

    peft.import_utils.is_te_available.cache_clear()
    peft.import_utils.is_te_pytorch_available.cache_clear()
    if present:
        import transformer_engine

        lora_te.te = transformer_engine
    elif hasattr(lora_te, "te"):
        del lora_te.te


@contextmanager
def use_standins() -> Iterator[None]:
    """The stand-ins importable (and enabled) in this process for the ``with`` block only."""
    old_env = os.environ.get(STANDINS_ENV)
    sys.path.insert(0, str(STANDINS))
    os.environ[STANDINS_ENV] = "1"
    _forget_libraries()
    _redetect_in_peft(True)
    try:
        yield
    finally:
        sys.path.remove(str(STANDINS))
        if old_env is None:
            os.environ.pop(STANDINS_ENV, None)
        else:
            os.environ[STANDINS_ENV] = old_env
        _forget_libraries()
        _redetect_in_peft(False)
