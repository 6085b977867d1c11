"""The released DC-VideoGen folder layout as a PIPELINE: diffusers transformers, the authors' DC-AE-V .pt,
umT5 with a separate tokenizer folder, Wan's CLIP .pth. The CLIP converter is checked against a plain
forward over the Wan-layout tensors; generation from the released layout equals generation from the
megavg pipeline exported from the same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

import megavg.models
from megavg.infer import generate
from megavg.infer.clip_weights import image_encoder_from_wan_clip
from megavg.infer.conditioning import clip_preprocess
from megavg.infer.export import main as export
from megavg.models.dcaev.state_dict_adapter import authors_key_map
from megavg.models.wan.state_dict_adapter import save_diffusers
from tests.infer.tiny_pipeline import CLIP_DIM, read_video, write_png

HEADS, LAYERS, PATCH, SIZE = 2, 3, 14, 28


def wan_clip_state(seed=0) -> dict[str, torch.Tensor]:
    """Random tensors in the Wan CLIP layout (vision tower plus a few text-tower keys to be dropped)."""
    g = torch.Generator().manual_seed(seed)
    d, n = CLIP_DIM, (SIZE // PATCH) ** 2

    def r(*shape, base=0.0):
        return torch.randn(*shape, generator=g) * 0.2 + base

    sd = {"visual.patch_embedding.weight": r(d, 3, PATCH, PATCH), "visual.cls_embedding": r(1, 1, d),
          "visual.pos_embedding": r(1, 1 + n, d), "visual.head": r(d, 16), "log_scale": r(()),
          "textual.token_embedding.weight": r(10, 8)}  # fmt: skip
    for name in ("pre_norm", "post_norm"):
        sd[f"visual.{name}.weight"], sd[f"visual.{name}.bias"] = r(d, base=1.0), r(d)
    for i in range(LAYERS):
        p = f"visual.transformer.{i}."
        for name in ("norm1", "norm2"):
            sd[p + name + ".weight"], sd[p + name + ".bias"] = r(d, base=1.0), r(d)
        sd[p + "attn.to_qkv.weight"], sd[p + "attn.to_qkv.bias"] = r(3 * d, d), r(3 * d)
        sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = r(d, d), r(d)
        sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"] = r(4 * d, d), r(4 * d)
        sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"] = r(d, 4 * d), r(d)
    return sd


def wan_visual_penultimate(sd, pixels):
    """Wan's vision tower written out: patch conv, [cls | patches] + positions, pre-norm, every block but
    the last (pre-norm attention with fused qkv, exact-GELU MLP)."""
    d = CLIP_DIM
    x = F.conv2d(pixels, sd["visual.patch_embedding.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = (
        torch.cat([sd["visual.cls_embedding"].expand(x.shape[0], -1, -1), x], dim=1)
        + sd["visual.pos_embedding"]
    )
    x = F.layer_norm(x, (d,), sd["visual.pre_norm.weight"], sd["visual.pre_norm.bias"], 1e-5)
    for i in range(LAYERS - 1):
        p = f"visual.transformer.{i}."
        h = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
        b, s, _ = h.shape
        q, k, v = F.linear(h, sd[p + "attn.to_qkv.weight"], sd[p + "attn.to_qkv.bias"]).view(
            b, s, 3, HEADS, d // HEADS).unbind(2)  # fmt: skip
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + F.linear(
            a.transpose(1, 2).reshape(b, s, d), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"]
        )
        h = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
        h = F.gelu(F.linear(h, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"]))
        x = x + F.linear(h, sd[p + "mlp.2.weight"], sd[p + "mlp.2.bias"])
    return x


def test_wan_clip_pth_gives_the_vision_towers_penultimate_tokens(tmp_path):
    sd = wan_clip_state()
    torch.save(sd, tmp_path / "clip.pth")
    encoder = image_encoder_from_wan_clip(tmp_path / "clip.pth", head_dim=CLIP_DIM // HEADS)
    image = torch.rand(2, 3, 40, 30) * 2 - 1
    with torch.no_grad():
        expected = wan_visual_penultimate(sd, clip_preprocess(image, SIZE))
    torch.testing.assert_close(encoder(image), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny_parts):
    """A released-layout folder and a megavg pipeline exported from the same tiny weights."""
    root = tmp_path_factory.mktemp("release")
    parts = tiny_parts
    rel, vae = write_release(root / "DC-VideoGen-tiny", parts)
    vae.save(root / "vae_sf1")
    out = str(root / "megavg")
    export(["--transformer", str(parts["t2v"]), "--vae", str(root / "vae_sf1"), "--dtype", "fp32",
            "--text-encoder", str(parts["text"]), "--shift", "3.0", "--out", out])  # fmt: skip
    write_png(root / "first.png", 28, 36)
    return root, rel


def write_release(rel, parts):
    """The released folder's layout at ``rel`` from the tiny parts (DC-AE-V named ``dc-ae-v-tiny-*.pt``:
    the file name selects the architecture); returns it and the DC-AE-V it holds (scaling factor 1, the
    tiny preset's)."""
    for kind in ("t2v", "i2v"):
        dit = megavg.models.load(parts[kind])
        save_diffusers(dit.args, dit.state_dict(), rel / f"transformer_{kind}")
    vae = megavg.models.load(parts["vae"])
    vae.args.scaling_factor = 1.0  # the released preset's factor is the preset's
    theirs = {key: vae.state_dict()[ours] for ours, key in authors_key_map(vae).items()}
    torch.save({"model_state_dict": theirs}, rel / "dc-ae-v-tiny-1.0-fp32.pt")
    transformers.AutoTokenizer.from_pretrained(parts["text"]).save_pretrained(rel / "tokenizer")
    transformers.UMT5EncoderModel.from_pretrained(parts["text"]).save_pretrained(rel / "text_encoder")
    torch.save(wan_clip_state(), rel / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    (rel / "scheduler").mkdir()
    (rel / "scheduler" / "scheduler_config.json").write_text(json.dumps({"flow_shift": 3.0}))
    return rel, vae


def test_released_layout_generates_what_the_exported_pipeline_does(release, tmp_path):
    root, rel = release
    args = ["--prompt", "a red fox", "--dtype", "fp32", "--steps", "2", "--size", "32", "32", "--frames", "8",
            "--no-progress", "--seed", "3"]  # fmt: skip
    generate.main([str(rel), *args, "--out", str(tmp_path / "rel.mp4")])
    generate.main([str(root / "megavg"), *args, "--out", str(tmp_path / "ours.mp4")])
    a, b = read_video(tmp_path / "rel.mp4"), read_video(tmp_path / "ours.mp4")
    assert a.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(a, b)


def test_released_layout_i2v(release, tmp_path, monkeypatch):
    root, rel = release
    monkeypatch.setattr("megavg.infer.clip_weights.HEAD_DIM", CLIP_DIM // HEADS)
    generate.main([str(rel), "--prompt", "a fox", "--image", str(root / "first.png"), "--dtype", "fp32",
                   "--steps", "1", "--size", "32", "32", "--frames", "4", "--no-progress",
                   "--out", str(tmp_path / "i2v.mp4")])  # fmt: skip
    assert read_video(tmp_path / "i2v.mp4").shape == (4, 28, 36, 3)
