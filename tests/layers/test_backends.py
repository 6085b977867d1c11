"""``auto`` picks a GPU library only when the entry points megavg calls import: fake installs on
``sys.path`` (tmp folders laid out like the real packages) that ``find_spec`` finds but megavg cannot use."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from megavg.layers import backends
from megavg.utils.errors import UserError

# package layouts: {relative file: source}
CORE_ONLY_TE = {  # `pip install transformer-engine` without the [pytorch] extra: no framework module
    "transformer_engine/__init__.py": "",
    "transformer_engine/common/__init__.py": "",
}
BROKEN_TE = {  # the extension built against another torch: importing it raises
    "transformer_engine/__init__.py": "",
    "transformer_engine/pytorch/__init__.py": "raise OSError('te_torch.so: undefined symbol')",
}
FLASH_ATTN_4 = {  # the flash-attn-4 wheel: CuTe DSL kernels only, no flash_attn_func
    "flash_attn/__init__.py": "",
    "flash_attn/cute/__init__.py": "def flash_attn_func(*args, **kwargs): ...",
}
WORKING_FLASH_ATTN = {"flash_attn/__init__.py": "def flash_attn_func(q, k, v): return q"}


@pytest.fixture
def fake_install(tmp_path, monkeypatch):
    """Write a package layout into a folder first on ``sys.path``, with a (pretend) CUDA device."""
    monkeypatch.setenv(backends.STANDINS_ENV, "1")

    def install(layout: dict[str, str]) -> None:
        for rel, source in layout.items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        backends.clear_cache()

    yield install
    for name in [m for m in sys.modules if m.split(".")[0] in ("transformer_engine", "flash_attn")]:
        module_file = getattr(sys.modules[name], "__file__", None) or ""
        if Path(module_file).is_relative_to(tmp_path):
            del sys.modules[name]
    backends.clear_cache()


@pytest.mark.parametrize(
    ("layout", "resolve", "fallback", "reason"),
    [
        (CORE_ONLY_TE, backends.resolve_linear, "torch", "import transformer_engine.pytorch` fails"),
        (BROKEN_TE, backends.resolve_linear, "torch", "undefined symbol"),
        (FLASH_ATTN_4, backends.resolve_attention, "sdpa", "flash_attn has no flash_attn_func"),
    ],
)
def test_found_but_unusable_library_is_not_picked(fake_install, caplog, layout, resolve, fallback, reason):
    fake_install(layout)
    library = next(iter(layout)).split("/")[0]
    assert backends._installed(library)  # what the old find_spec check counted as usable
    with caplog.at_level(logging.WARNING, logger="megavg"):
        assert resolve("auto") == fallback
    assert any(reason in r.getMessage() and library in r.getMessage() for r in caplog.records)
    with pytest.raises(UserError, match=reason.strip("`")):  # naming it explicitly says why it cannot
        resolve("te" if fallback == "torch" else "flash")


def test_usable_library_is_picked(fake_install):
    fake_install(WORKING_FLASH_ATTN)
    assert backends.resolve_attention("auto") == "flash"
    assert backends.unusable_reason("flash_attn") is None
