"""Data layer: PyAV clips, webdataset shards split by data-parallel rank, latent shards.

The names below are imported on first use (PEP 562), so ``megavg.data.video`` (PyAV only) can be used by
the standalone runner without pulling in webdataset.
"""

import importlib

_EXPORTS = {
    "DataConfig": "megavg.data.config",
    "write_latent_shards": "megavg.data.latents",
    "LoaderStats": "megavg.data.loader",
    "ShardLoader": "megavg.data.loader",
    "build_loader": "megavg.data.loader",
    "real_clips": "megavg.data.samples",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'megavg.data' has no attribute {name!r}")
