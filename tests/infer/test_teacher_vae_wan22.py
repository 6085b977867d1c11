"""The Wan 2.2 VAE (TI2V-5B's: 48 channels, patchify 2, 16x spatial) as AE-Adapt-V's teacher: latents of the
student's clip and the TI2V first-frame condition, against diffusers' own WanImageToVideoPipeline."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline

from megavg.infer.teacher_vae import TeacherVAE
from tests.models.wan_reference import random_diffusers

Z = 12  # = the tiny TI2V preset's channels


def tiny_wan22_vae(folder) -> AutoencoderKLWan:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=Z,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        is_residual=True,
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=16,
        latents_mean=[0.05 * i - 0.3 for i in range(Z)],
        latents_std=[0.5 + 0.1 * i for i in range(Z)],
    ).eval()
    vae.save_pretrained(folder / "vae")
    return vae


def test_wan22_teacher_latents_and_first_frame_condition(tmp_path):
    vae = tiny_wan22_vae(tmp_path)
    teacher = TeacherVAE(tmp_path)
    video = torch.rand(1, 3, 8, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = teacher.latents(video)
    assert latents.shape == (1, Z, 3, 2, 3)  # 8 + 1 frames -> 3 latent frames; 16x spatial
    with torch.no_grad():
        z = vae.encode(torch.cat([video[:, :, :1], video], dim=2)).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, Z, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, Z, 1, 1, 1)
    torch.testing.assert_close(latents, (z - mean) * inv_std, rtol=1e-5, atol=1e-5)

    pipe = WanImageToVideoPipeline(
        None,
        None,
        vae,
        UniPCMultistepScheduler(),
        transformer=random_diffusers("wan-tiny-ti2v"),
        expand_timesteps=True,
    )
    image = video[:, :, 0]
    with torch.no_grad():
        _, expected, _ = pipe.prepare_latents(
            image, 1, Z, 32, 48, 9, torch.float32, "cpu", None, torch.zeros(1, Z, 3, 2, 3)
        )
    condition = teacher.i2v_condition(image, 9)
    assert condition.shape == (1, Z, 1, 2, 3)  # the image's latent frame alone (no mask channels)
    torch.testing.assert_close(condition, expected, rtol=1e-5, atol=1e-5)
