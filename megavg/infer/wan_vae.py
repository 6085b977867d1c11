"""The Wan VAE (diffusers ``AutoencoderKLWan``) in megavg: the base models' autoencoder.

Two users, one set of functions, so what AE-Adapt-V's pre-computation feeds a base model is what a base
pipeline feeds it at inference:

- the teacher side of AE-Adapt-V (:mod:`megavg.infer.teacher_vae`) encodes clips and the I2V / TI2V
  first-frame condition;
- a base pipeline folder whose ``vae/`` is an ``AutoencoderKLWan`` folder (Wan 2.2 TI2V-5B with its
  48-channel VAE, :mod:`megavg.infer.pipeline`) encodes ``generate``'s input image with
  :meth:`WanVAE.first_frame` and decodes the sampler's latents with :meth:`WanVAE.decode`.

Latents are the posterior mode, normalised per channel as Wan's pipelines do, ``(z - latents_mean) /
latents_std`` (the config's lists). The VAE is causal: 4k+1 frames <-> k+1 latent frames (frame 0 alone
in latent frame 0). diffusers is needed here (``pip install diffusers``; the ``dev`` extra has it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from megavg.utils.errors import UserError

CLASS_NAME = "AutoencoderKLWan"
MASK_CHANNELS = 4  # the I2V mask: one channel per pixel frame packed into a latent frame


@dataclass(frozen=True)
class WanVAEArgs:
    """What the runner reads off a VAE (the names DC-AE-V's args use), from the config alone."""

    latent_channels: int
    spatial_compression: int
    temporal_compression: int
    scaling_factor: float = 1.0  # the latents are normalised per channel instead (mean / std)
    first_frame_only: bool = False  # the Wan 2.2 VAE: TI2V conditions on the image's latent frame alone

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a 4k+1-frame clip: k+1 (causal)."""
        return (frames - 1) // self.temporal_compression + 1


def vae_folder(path: str | os.PathLike) -> Path | None:
    """The ``AutoencoderKLWan`` folder at ``path`` or its ``vae/`` subfolder (a diffusers pipeline), or
    None when neither holds one."""
    for folder in (Path(path), Path(path) / "vae"):
        config = folder / "config.json"
        if config.is_file():
            try:
                if json.loads(config.read_text()).get("_class_name") == CLASS_NAME:
                    return folder
            except (json.JSONDecodeError, AttributeError):
                return None
    return None


def wan_vae_args(path: str | os.PathLike) -> WanVAEArgs:
    """The runner's view of the ``AutoencoderKLWan`` config at ``path`` (no weights read)."""
    folder = vae_folder(path)
    if folder is None:
        raise UserError(f"{path}: not an {CLASS_NAME} folder (config.json with _class_name {CLASS_NAME})")
    config = json.loads((folder / "config.json").read_text())
    return WanVAEArgs(
        latent_channels=int(config.get("z_dim", 16)),
        spatial_compression=int(config.get("scale_factor_spatial", 8)),
        temporal_compression=int(config.get("scale_factor_temporal", 4)),
        first_frame_only=config.get("patch_size") is not None,
    )


class WanVAE(nn.Module):
    """A frozen ``AutoencoderKLWan`` with normalised latents: ``encode`` / ``first_frame`` / ``decode``."""

    def __init__(self, vae: nn.Module, args: WanVAEArgs):
        super().__init__()
        self.vae, self.args = vae.eval().requires_grad_(False), args
        config = vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        self.register_buffer("mean", torch.tensor(config.latents_mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(config.latents_std, dtype=torch.float32).view(shape))

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: torch.dtype | None = None) -> WanVAE:
        """The VAE at ``path`` (an ``AutoencoderKLWan`` folder or a diffusers pipeline folder with
        ``vae/``), on the CPU in ``dtype`` (default float32); the normalisation stays float32."""
        try:
            from diffusers import AutoencoderKLWan
        except ImportError:
            raise UserError(f"{path}: a Wan VAE needs diffusers (pip install diffusers)") from None
        args = wan_vae_args(path)
        try:
            vae = AutoencoderKLWan.from_pretrained(vae_folder(path), torch_dtype=dtype or torch.float32)
        except (OSError, ValueError, TypeError) as err:
            raise UserError(f"Wan VAE {path}: cannot load ({str(err).splitlines()[0]})") from None
        return cls(vae, args)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 4k+1, H, W] in [-1, 1] -> normalised latents [B, z_dim, k+1, H/s, W/s], float32, on the
        VAE's device."""
        if (video.shape[2] - 1) % self.args.temporal_compression:
            raise UserError(f"Wan VAE: {video.shape[2]} frames is not {self.args.temporal_compression}k+1")
        z = self.vae.encode(video.to(self.mean.device, self.dtype)).latent_dist.mode().float()
        return (z - self.mean) / self.std

    def first_frame(self, image: torch.Tensor) -> torch.Tensor:
        """TI2V-5B's image conditioning: ``image`` [B, 3, H, W] encoded alone as a one-frame clip,
        [B, z_dim, 1, H/s, W/s] (diffusers' ``WanImageToVideoPipeline`` with ``expand_timesteps``), the
        latent frame the sampler's ``first_frame`` takes."""
        return self.encode(image[:, :, None])

    def condition(self, image: torch.Tensor, frames: int) -> torch.Tensor:
        """The base image-to-video model's condition for a ``frames`` (4k+1) clip starting at ``image``
        [B, 3, H, W]. Wan 2.1 I2V and Wan 2.2 I2V-A14B: the image followed by zero frames, encoded, after a
        mask that is 1 on the first latent frame, [B, 4 + z_dim, k+1, h, w] (mask first, as the DiT takes
        it). The Wan 2.2 VAE (TI2V-5B): :meth:`first_frame`."""
        if self.args.first_frame_only:
            return self.first_frame(image)
        video = image.new_zeros(image.shape[0], 3, frames, *image.shape[-2:])
        video[:, :, 0] = image
        cond = self.encode(video)  # B, z_dim, k+1, h, w
        mask = torch.zeros_like(cond[:, :MASK_CHANNELS])
        mask[:, :, 0] = 1.0
        return torch.cat([mask, cond], dim=1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, z_dim, k+1, h, w] -> video [B, 3, 4k+1, H, W] in [-1, 1] (clamped)."""
        z = latents.to(self.mean.device).float() * self.std + self.mean
        return self.vae.decode(z.to(self.dtype)).sample.clamp(-1, 1)
