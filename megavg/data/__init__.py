"""Data layer: PyAV clips, webdataset shards split by data-parallel rank, latent shards."""

from megavg.data.config import DataConfig
from megavg.data.latents import write_latent_shards
from megavg.data.loader import LoaderStats, ShardLoader, build_loader
from megavg.data.samples import real_clips

__all__ = ["DataConfig", "LoaderStats", "ShardLoader", "build_loader", "real_clips", "write_latent_shards"]
