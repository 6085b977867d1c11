"""Image-to-video conditioning: the DC-AE-V first-frame condition and the CLIP image tokens.

What the authors' pipeline does (DC-Gen ``dc_videogen/pipeline_dc_videogen_wan_i2v.py``, a subclass of
diffusers' ``WanImageToVideoPipeline`` whose ``prepare_latents`` it overrides), which :func:`i2v_condition`
reproduces:

- pixel space first: the image (already resized to the output size, in [-1, 1]) is repeated 4x along time
  so it fills one latent frame, and ``frames - 4`` frames of **zeros in pixel space** follow it; that whole
  clip goes through the DC-AE-V encoder (so the latent frames after the first are the encoding of black
  video, not zeros), and the latent is multiplied by the scaling factor;
- the mask is built at pixel frame rate (1 for the first 4 frames, 0 after), viewed as
  ``[B, T_lat, 4, h, w]`` and transposed to ``[B, 4, T_lat, h, w]``: 4 channels, all 1 on latent frame 0
  and 0 after (the original Wan builds the same 4 channels from 1 + 4k frames; DC-Gen repeats the image
  instead);
- channel order: ``concat([mask, latent_condition])``, and at every denoising step the DiT input is
  ``concat([noisy latents, condition])`` = 32 noisy + 4 mask + 32 condition = 68 channels (DESIGN.md §5).

CLIP (:class:`ImageEncoder`): the Wan-2.1 / DC-Gen I2V model conditions on the penultimate hidden states of
CLIP ViT-H/14 (257 tokens x 1280), run in fp32. Preprocessing as in Wan's ``clip.py``: the [-1, 1] image is
resized (bicubic, no crop) to the encoder's square input size, mapped to [0, 1], normalised with CLIP's
mean and std.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from megavg.utils.errors import LOAD_ERRORS, UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MASK_CHANNELS = 4  # the mask is built per pixel frame and folded into 4 channels per latent frame


def condition_clip(image: torch.Tensor, frames: int, t: int, chunk: int) -> Iterator[torch.Tensor]:
    """The conditioning clip -- ``image`` [B,3,H,W] on its first ``t`` frames, black after, ``frames`` in all
    -- in pieces of ``chunk`` frames (B,3,n,H,W), never built whole."""
    B, _, H, W = image.shape
    for start in range(0, frames, chunk):
        piece = image.new_zeros(B, 3, min(chunk, frames - start), H, W)  # black: 0 in [-1, 1]
        piece[:, :, : max(0, t - start)] = image.unsqueeze(2)  # the image fills the first latent frame
        yield piece


@torch.no_grad()
def i2v_condition(vae, image: torch.Tensor, frames: int) -> torch.Tensor:
    """First-frame condition for an I2V DiT: ``[B, 4 + C, T_lat, h, w]`` (mask channels first).

    ``image``: [B, 3, H, W] in [-1, 1] at the output size; ``frames``: output frames, a multiple of the
    temporal compression ``t`` (4), at least ``t``. ``vae``: a DC-AE-V model (``encode`` returns
    unscaled latents). The result is on the VAE's device, in float32.

    The clip is encoded streamed, one model chunk (``vae.frame_chunk`` frames) at a time with each conv's
    left context carried over (:mod:`megavg.models.dcaev.streaming`): equal to one pass over the whole
    clip, with activations of one chunk (at 2176x3840 x 80 frames one pass needs ~43 GB for the first conv
    output alone).
    """
    from megavg.models.dcaev.streaming import stream_encode

    t = vae.temporal_compression
    if frames < t or frames % t:
        raise ValueError(f"frames must be a positive multiple of {t}, got {frames}")
    param = next(vae.parameters())
    image = image.to(param.device, param.dtype)
    pieces = condition_clip(image, frames, t, vae.frame_chunk)
    latent = torch.cat([z.float() for z in stream_encode(vae, pieces)], dim=2)  # B,C,T',h,w
    latent = latent * vae.args.scaling_factor
    B = image.shape[0]
    mask = latent.new_zeros(B, MASK_CHANNELS, *latent.shape[2:])
    mask[:, :, 0] = 1.0  # pixel frames 0..t-1 are given: the first latent frame
    return torch.cat([mask, latent], dim=1)


def clip_preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> CLIP pixel values [B, 3, size, size] (bicubic resize, mean/std)."""
    x = F.interpolate(image.float(), size=(size, size), mode="bicubic", align_corners=False)
    x = x * 0.5 + 0.5
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class ImageEncoder:
    """CLIP vision tower (transformers ``CLIPVisionModel``) giving the DiT's image tokens.

    ``encoder = ImageEncoder(folder_or_hub_id)``; ``encoder(image)`` maps [B, 3, H, W] in [-1, 1] to the
    penultimate hidden states [B, 1 + patches, width] ([B, 257, 1280] for ViT-H/14), float32.
    """

    def __init__(self, name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
        import transformers

        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        try:
            self.model = transformers.CLIPVisionModel.from_pretrained(
                name_or_path, torch_dtype=torch.float32, local_files_only=offline
            )
        except LOAD_ERRORS as err:
            raise UserError(
                f"image encoder {name_or_path}: cannot load ({str(err).splitlines()[0]})"
            ) from None
        self.model.eval().requires_grad_(False).to(device)

    @classmethod
    def from_model(cls, model) -> ImageEncoder:
        """Wrap an already built ``CLIPVisionModel``."""
        self = cls.__new__(cls)
        self.model = model.eval().requires_grad_(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> ImageEncoder:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        pixels = clip_preprocess(image.to(self.device), self.model.config.image_size)
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[-2].float()  # penultimate layer, before the last block
