"""The base model's VAE for AE-Adapt-V phase 1 (diffusers ``AutoencoderKLWan``): the Wan-2.1 VAE (Wan 2.1,
Wan 2.2 A14B) or the Wan 2.2 VAE (TI2V-5B: 48 channels, patchify 2, 16x spatial).

    teacher = TeacherVAE("Wan2.1-T2V-14B-Diffusers")   # a diffusers folder (or its vae/ subfolder)
    z = teacher.latents(video)                          # [B, 3, 4k, H, W] -> [B, z_dim, k+1, H/s, W/s]

Clip the teacher sees: the student's own 4k frames with the first frame repeated in front (4k+1 frames,
the causal Wan layout). Latent 0 then holds frame 0 alone and latent i >= 1 holds exactly the four frames
of the student's latent i-1, so no extra frame is decoded and both models see the same content.
Latents are the posterior mode, normalised per channel the way Wan's pipelines do,
``(z - latents_mean) / latents_std`` (the config's lists): what the Wan DiT sees.

The base model's VAE may also be a megavg DC-AE-V folder (:class:`DcaevTeacher`, e.g. an f8t4 model in a
miniature of the recipe, docs/reproduction.md): its latents are the student's own 4k frames encoded and
multiplied by its scaling factor, as pre-computation stores any DC-AE-V latent. :func:`load_teacher` picks
the class from the folder.
"""

from __future__ import annotations

import os

import torch

from megavg.infer.wan_vae import WanVAE, vae_folder
from megavg.utils.errors import UserError


class TeacherVAE:
    """A frozen ``AutoencoderKLWan`` encoding clips into normalised Wan latents (:class:`WanVAE`, the
    functions a base pipeline runs too)."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32):
        if vae_folder(path) is None:
            raise UserError(f"teacher VAE {path}: cannot load (no AutoencoderKLWan config.json, nor in vae/)")
        self.wan = WanVAE.load(path, dtype).to(device)
        self.vae = self.wan.vae
        self.temporal = self.wan.args.temporal_compression
        # the Wan 2.2 VAE (patchify) serves TI2V-5B, conditioned on the image's latent frame alone
        self.first_frame_only = self.wan.args.first_frame_only
        self.device, self.dtype = device, dtype

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 4k+1, H, W] in [-1, 1] -> normalised latents [B, z_dim, k+1, H/s, W/s] (float32, CPU)."""
        return self.wan.encode(video).cpu()

    def latents(self, video: torch.Tensor) -> torch.Tensor:
        """Teacher latents of the student's clip [B, 3, 4k, H, W]: the first frame repeated in front."""
        return self.encode(torch.cat([video[:, :, :1], video], dim=2))  # B, 3, 4k+1, H, W

    def i2v_condition(self, image: torch.Tensor, frames: int) -> torch.Tensor:
        """The base model's condition for a 4k+1-frame clip starting at ``image`` [B, 3, H, W]
        (:meth:`WanVAE.condition`: mask + encoded image and zero frames for Wan 2.1 I2V and Wan 2.2
        I2V-A14B; the image's latent frame alone for TI2V-5B, as ``generate`` on a base pipeline computes
        it), float32 on the CPU."""
        return self.wan.condition(image, frames).cpu()


class DcaevTeacher:
    """A frozen megavg DC-AE-V as the base model's VAE: latents = encode(clip) * scaling factor."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32):
        import megavg.models

        self.vae = megavg.models.load(path, device=device, dtype=dtype).eval().requires_grad_(False)
        if not hasattr(self.vae, "encode"):
            raise UserError(f"teacher VAE {path}: not a DC-AE-V model folder")
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def latents(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 4k, H, W] in [-1, 1] -> scaled latents [B, C, k, H/f, W/f] (float32, CPU)."""
        z = self.vae.encode(video.to(self.device, self.dtype)).float().cpu()
        return z * self.vae.args.scaling_factor

    def i2v_condition(self, image: torch.Tensor, frames: int) -> torch.Tensor:
        """The I2V condition in this VAE's space (:func:`megavg.infer.conditioning.i2v_condition`) for a
        ``frames``-frame clip (the student's count; the Wan layout's extra first frame is dropped)."""
        from megavg.infer.conditioning import i2v_condition

        return i2v_condition(self.vae, image.to(self.device, self.dtype), frames - 1).float().cpu()


def load_teacher(path: str | os.PathLike, device: str = "cpu") -> TeacherVAE | DcaevTeacher:
    """The teacher VAE in ``path``: a megavg DC-AE-V folder (config.json with format megavg) or a
    diffusers ``AutoencoderKLWan`` folder."""
    from megavg.models import registry

    try:
        family = registry.read_config(path).get("family")
    except UserError:
        family = None
    return DcaevTeacher(path, device=device) if family == "dcaev" else TeacherVAE(path, device=device)
