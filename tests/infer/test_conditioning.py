"""I2V conditioning against independent computations: the condition rebuilt the way the authors'
pipeline writes it (pixel-rate mask folded by view/transpose), and CLIP tokens from a hand-run of the
vision tower's layers."""

import dataclasses

import numpy as np
import pytest
import torch
import transformers

import megavg.models
from megavg.infer.conditioning import ImageEncoder, clip_preprocess, i2v_condition


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    args = dataclasses.replace(megavg.models.preset_args("dc-ae-v-tiny"), scaling_factor=0.625)
    return megavg.models.build(args).eval()


def reference_condition(vae, image, frames):
    """The condition as the DC-Gen pipeline builds it, written out independently."""
    B, _, H, W = image.shape
    clip = torch.zeros(B, 3, frames, H, W)
    for f in range(4):
        clip[:, :, f] = image
    with torch.no_grad():
        latent = vae.encode(clip) * 0.625
    h, w = latent.shape[-2:]
    mask = torch.ones(B, 1, frames, h, w)
    mask[:, :, 4:] = 0
    mask = mask.view(B, -1, 4, h, w).transpose(1, 2)  # B, 4, T_lat, h, w
    return torch.cat([mask, latent], dim=1)


def test_i2v_condition_matches_pipeline_construction(vae):
    image = torch.rand(2, 3, 16, 24) * 2 - 1
    cond = i2v_condition(vae, image, frames=12)
    assert cond.shape == (2, 4 + 4, 3, 4, 6)
    torch.testing.assert_close(cond, reference_condition(vae, image, 12), rtol=1e-5, atol=1e-6)
    assert cond[:, :4, 0].eq(1).all() and cond[:, :4, 1:].eq(0).all()


def test_i2v_condition_refuses_frames_off_grid(vae):
    with pytest.raises(ValueError, match="multiple of 4"):
        i2v_condition(vae, torch.zeros(1, 3, 16, 16), frames=10)


def tiny_clip(seed=0):
    torch.manual_seed(seed)
    config = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        image_size=28, patch_size=14, projection_dim=8,
    )  # fmt: skip
    return transformers.CLIPVisionModel(config).eval()


def hand_run_penultimate(model, pixels):
    """Embeddings -> pre-LayerNorm -> every encoder layer but the last, called one by one."""
    vm = getattr(model, "vision_model", model)  # transformers 4 nests the tower, 5 does not
    x = vm.pre_layrnorm(vm.embeddings(pixels))
    for layer in vm.encoder.layers[:-1]:
        out = layer(x, None)
        x = out[0] if isinstance(out, tuple) else out
    return x


def test_clip_preprocess_normalises_with_clip_statistics():
    image = torch.rand(1, 3, 28, 28) * 2 - 1  # already at the input size: the resize is the identity
    got = clip_preprocess(image, 28).numpy()
    x = (image.numpy() + 1) / 2
    mean = np.array([0.48145466, 0.4578275, 0.40821073]).reshape(1, 3, 1, 1)
    std = np.array([0.26862954, 0.26130258, 0.27577711]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(got, (x - mean) / std, rtol=1e-5, atol=1e-5)
    flat = torch.full((1, 3, 40, 90), 0.2)  # any size and aspect -> square, a flat image stays flat
    out = clip_preprocess(flat, 28)
    assert out.shape == (1, 3, 28, 28)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([(0.6 - m) / s for m, s in zip(
        [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])]))  # fmt: skip


def test_image_encoder_gives_penultimate_tokens(tmp_path):
    model = tiny_clip()
    model.save_pretrained(tmp_path / "clip")
    encoder = ImageEncoder(tmp_path / "clip")
    image = torch.rand(2, 3, 28, 28) * 2 - 1
    tokens = encoder(image)
    assert tokens.shape == (2, 1 + 4, 16) and tokens.dtype == torch.float32
    with torch.no_grad():
        expected = hand_run_penultimate(model, clip_preprocess(image, 28))
    torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)


def test_image_encoder_bad_folder(tmp_path):
    from megavg.utils.errors import UserError

    with pytest.raises(UserError, match="image encoder"):
        ImageEncoder(tmp_path / "missing")
    tiny_clip().save_pretrained(tmp_path / "clip")  # truncated weights: SafetensorError, not OSError
    weights = tmp_path / "clip" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"image encoder .*clip: cannot load \(.*header"):
        ImageEncoder(tmp_path / "clip")


def test_i2v_condition_is_encoded_one_chunk_at_a_time(vae):
    """36 frames (4 chunks of 8 + a partial one): equal to one pass over the whole clip, while no conv
    ever sees more than one chunk plus its left context (one pass: all 36 frames)."""
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    longest = []
    convs = [m for m in vae.modules() if isinstance(m, torch.nn.Conv3d)]
    hooks = [m.register_forward_pre_hook(lambda mod, args: longest.append(args[0].shape[2])) for m in convs]
    try:
        cond = i2v_condition(vae, image, frames=36)
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(cond, reference_condition(vae, image, 36), rtol=1e-5, atol=1e-6)
    pads = max(m.kernel_size[0] - 1 for m in convs)
    assert vae.frame_chunk < 36 and max(longest) <= vae.frame_chunk + pads
