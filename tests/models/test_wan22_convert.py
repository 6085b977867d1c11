"""Wan 2.2 conversion into a megavg experts folder: the diffusers pipeline layout (transformer/ +
transformer_2/, model_index.json) and the original one (high_noise_model/ + low_noise_model/, TI2V-5B)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from megavg.models import load
from megavg.models.wan.experts import convert_cli, read_experts
from megavg.utils.errors import UserError
from tests.models.test_wan_convert import original_layout
from tests.models.wan_reference import diffusers_forward, inputs, random_diffusers


def assert_experts_equal(refs, folder):
    names = ["transformer", "transformer_2"][: len(refs)]
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == names
    for ref, name in zip(refs, names):
        model = load(folder / name).eval()
        x = inputs(model.args)
        with torch.no_grad():
            torch.testing.assert_close(model(*x), diffusers_forward(ref, *x), atol=1e-5, rtol=1e-5)


def write_diffusers(tmp_path, refs, index: dict):
    src = tmp_path / "src"
    for ref, name in zip(refs, ["transformer", "transformer_2"]):
        ref.save_pretrained(src / name)
    # the released model_index.json lists each component as [library, class]
    parts = {n: ["diffusers", "WanTransformer3DModel"] for n in ["transformer", "transformer_2"][: len(refs)]}
    (src / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", **parts, **index}))
    return src


@pytest.mark.parametrize("preset, ratio", [("wan-tiny-t2v", 0.875), ("wan-tiny-i2v-a14b", 0.9)])
def test_diffusers_two_experts(tmp_path, preset, ratio):
    refs = [random_diffusers(preset, seed=s) for s in (0, 1)]
    src = write_diffusers(tmp_path, refs, {"boundary_ratio": ratio})
    convert_cli([str(src), "--out", str(tmp_path / "out")])
    assert_experts_equal(refs, tmp_path / "out")
    experts = read_experts(tmp_path / "out")
    assert (experts.boundary_ratio, experts.expand_timesteps) == (ratio, False)


def test_diffusers_ti2v_single_transformer(tmp_path):
    ref = random_diffusers("wan-tiny-ti2v")
    index = {"boundary_ratio": None, "expand_timesteps": True, "transformer_2": [None, None]}  # as released
    src = write_diffusers(tmp_path, [ref], index)
    convert_cli([str(src), "--out", str(tmp_path / "out")])
    assert_experts_equal([ref], tmp_path / "out")
    experts = read_experts(tmp_path / "out")
    assert (experts.boundary_ratio, experts.expand_timesteps) == (None, True)


def original_config(ref, model_type: str) -> dict:
    """An original Wan 2.2 config.json (WanModel's fields) for a diffusers model's architecture."""
    a = ref.config
    dim = a.num_attention_heads * a.attention_head_dim
    return dict(
        _class_name="WanModel",
        model_type=model_type,
        dim=dim,
        ffn_dim=a.ffn_dim,
        freq_dim=a.freq_dim,
        in_dim=a.in_channels,
        out_dim=a.out_channels,
        num_heads=a.num_attention_heads,
        num_layers=a.num_layers,
        text_len=512,
        eps=a.eps,
        text_dim=a.text_dim,
    )


def write_original(folder, ref, model_type: str):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(original_config(ref, model_type)))
    state = original_layout({k: v.contiguous() for k, v in ref.state_dict().items()})
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("preset, model_type", [("wan-tiny-t2v", "t2v"), ("wan-tiny-i2v-a14b", "i2v")])
def test_original_high_low_noise(tmp_path, preset, model_type):
    """Wan 2.2's I2V experts say model_type i2v yet hold no CLIP image embedder: converted without one."""
    refs = [random_diffusers(preset, seed=s) for s in (0, 1)]
    for ref, name in zip(refs, ["high_noise_model", "low_noise_model"]):
        write_original(tmp_path / "src" / name, ref, model_type)
    convert_cli([str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--boundary", "0.8"])
    assert_experts_equal(refs, tmp_path / "out")
    assert read_experts(tmp_path / "out").boundary_ratio == 0.8


def test_original_boundary_defaults_need_a_known_task(tmp_path):
    """Without --boundary the Wan 2.2 task config decides (T2V 0.875, I2V 0.9); tiny channels are neither."""
    ref = random_diffusers("wan-tiny-t2v")
    for name in ["high_noise_model", "low_noise_model"]:
        write_original(tmp_path / "src" / name, ref, "t2v")
    with pytest.raises(UserError, match="in_dim 4 is neither"):
        convert_cli([str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_original_ti2v_folder(tmp_path):
    ref = random_diffusers("wan-tiny-ti2v")
    write_original(tmp_path / "src", ref, "ti2v")
    convert_cli([str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    assert_experts_equal([ref], tmp_path / "out")
    assert read_experts(tmp_path / "out").expand_timesteps


def test_not_a_wan22_folder(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(UserError, match="not a Wan 2.2 folder"):
        convert_cli([str(tmp_path / "src"), "--out", str(tmp_path / "out")])
