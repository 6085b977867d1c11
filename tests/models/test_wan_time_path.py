"""The Wan time path (timestep sinusoid -> MLP -> projection -> modulation) runs in float32 whatever the
parameters' dtype (bf16 under DeepSpeed's bf16 ZeRO-3, bf16 in the runner), as Wan's float32 autocast
regions do; exported and loaded runners keep its weights in float32 (diffusers' keep-in-fp32 rule)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from safetensors import safe_open

import megavg.models
from megavg.infer.export import main as export
from megavg.models import registry

PRESET = "wan-tiny-t2v"


def reference_time_path(model, t):
    """A plain float32 reference with the model's (possibly bf16) weights upcast: diffusers' sinusoid
    (cos first), Linear-SiLU-Linear, then SiLU-Linear to 6 modulation vectors."""
    te = model.time_embed
    freq = get_timestep_embedding(t, te.freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)

    def linear(layer, x):
        return x @ layer.weight.float().T + layer.bias.float()

    emb = linear(te.linear_2, F.silu(linear(te.linear_1, freq)))
    return emb, linear(te.proj, F.silu(emb)).view(len(t), 6, -1)


def test_time_path_is_float32_with_bf16_weights():
    model = megavg.models.build(PRESET).to(torch.bfloat16)  # what DeepSpeed's bf16 engine holds
    t = torch.tensor([999.0, 412.5, 3.0])
    emb, proj = model.time_embed(t)
    ref_emb, ref_proj = reference_time_path(model, t)
    assert emb.dtype == proj.dtype == torch.float32
    torch.testing.assert_close(emb, ref_emb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(proj, ref_proj, rtol=1e-5, atol=1e-6)


def test_time_path_under_autocast_stays_float32():
    model = megavg.models.build(PRESET)
    t = torch.tensor([500.0, 20.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb, proj = model.time_embed(t)
    ref_emb, ref_proj = reference_time_path(model, t)
    assert proj.dtype == torch.float32
    torch.testing.assert_close(proj, ref_proj, rtol=1e-5, atol=1e-6)


def test_runner_keeps_time_path_weights_float32(tmp_path):
    model = megavg.models.build(PRESET)
    model.save(tmp_path / "dit")
    fp32 = registry.load_state_dict(tmp_path / "dit")
    loaded = registry.load(tmp_path / "dit", dtype=torch.bfloat16)
    kept = {n for n, p in loaded.named_parameters() if p.dtype == torch.float32}
    expected = {n for n in fp32 if n.startswith("time_embed.") or n.endswith("modulation")}
    assert kept == expected and any(n.startswith("blocks.") for n in kept)
    for name in expected:  # cast once, from the stored float32 values: nothing lost
        assert torch.equal(loaded.state_dict()[name], fp32[name])
    assert loaded.patch_embed.weight.dtype == torch.bfloat16


def test_bf16_export_writes_time_path_in_float32(tmp_path):
    megavg.models.build(PRESET).save(tmp_path / "dit")
    megavg.models.build("dc-ae-v-tiny").save(tmp_path / "vae")  # 4 latent channels, as the DiT
    export(["--transformer", str(tmp_path / "dit"), "--vae", str(tmp_path / "vae"), "--text-encoder",
            "google/umt5-xxl", "--dtype", "bf16", "--out", str(tmp_path / "pipe")])  # fmt: skip
    dtypes = {}
    for path in (tmp_path / "pipe" / "transformer").glob("*.safetensors"):
        with safe_open(str(path), "pt") as fh:
            dtypes.update({key: fh.get_slice(key).get_dtype() for key in fh.keys()})
    for key, dtype in dtypes.items():
        time_path = key.startswith("time_embed.") or key.endswith("modulation")
        assert dtype == ("F32" if time_path else "BF16"), key
