"""Weight conversion: diffusers folders (sharded), original Wan layout, .pt files, exact key accounting."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from megavg.models import load
from megavg.models.wan.state_dict_adapter import convert_cli
from megavg.utils.errors import UserError
from tests.distributed.launch import REPO
from tests.models.wan_reference import diffusers_forward, inputs, random_diffusers

# diffusers -> original Wan names, written independently of megavg's adapter (regex, applied in order)
ORIGINAL_NAMES = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.to_out\.0\.", ".self_attn.o."),
    (r"\.attn2\.to_out\.0\.", ".cross_attn.o."),
    (r"\.attn1\.to_([qkv])\.", r".self_attn.\1."),
    (r"\.attn2\.to_([qkv])\.", r".cross_attn.\1."),
    (r"\.attn1\.norm_", ".self_attn.norm_"),
    (r"\.attn2\.norm_added_k\.", ".cross_attn.norm_k_img."),
    (r"\.attn2\.norm_", ".cross_attn.norm_"),
    (r"\.attn2\.add_k_proj\.", ".cross_attn.k_img."),
    (r"\.attn2\.add_v_proj\.", ".cross_attn.v_img."),
    (r"\.norm2\.", ".norm3."),  # the cross-attention norm is norm3 in the original code
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
]


def original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in ORIGINAL_NAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def assert_same_as(ref, folder):
    model = load(folder).eval()
    x = inputs(model.args)
    with torch.no_grad():
        torch.testing.assert_close(model(*x), diffusers_forward(ref, *x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["wan-tiny-t2v", "wan-tiny-i2v"])
def test_diffusers_folder_sharded(tmp_path, preset):
    ref = random_diffusers(preset)
    ref.save_pretrained(tmp_path / "src", max_shard_size="50KB")
    assert list((tmp_path / "src").glob("*.safetensors.index.json")), "expected a sharded checkpoint"
    convert_cli([str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    assert_same_as(ref, tmp_path / "out")


def test_conversion_where_transformer_engine_is_installed(tmp_path, standins):
    """With TE importable, ``linear: auto`` builds TE linears, which carry ``_extra_state`` (FP8 scaling
    state) that no released checkpoint has: conversion must still take the weights (the GPU machine case)."""
    from megavg.models.wan.state_dict_adapter import convert

    ref = random_diffusers("wan-tiny-t2v")
    ref.save_pretrained(tmp_path / "src")
    model = convert(tmp_path / "src")
    assert any(k.endswith("_extra_state") for k in model.state_dict()), "expected TE linears (stand-ins)"
    torch.testing.assert_close(model.blocks[0].ffn.fc1.weight, ref.blocks[0].ffn.net[0].proj.weight)


def test_original_layout_folder(tmp_path):
    ref = random_diffusers("wan-tiny-i2v")
    a = ref.config
    config = {"_class_name": "WanModel", "model_type": "i2v", "dim": 64, "ffn_dim": a.ffn_dim}
    config.update(freq_dim=a.freq_dim, in_dim=a.in_channels, out_dim=a.out_channels, num_heads=4)
    config.update(num_layers=a.num_layers, text_len=512, eps=1e-6, text_dim=a.text_dim, image_dim=a.image_dim)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps(config))
    state = original_layout({k: v.contiguous() for k, v in ref.state_dict().items()})
    assert "blocks.1.self_attn.q.weight" in state and "head.head.weight" in state
    save_file(state, str(tmp_path / "src" / "diffusion_pytorch_model.safetensors"))
    convert_cli([str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    assert_same_as(ref, tmp_path / "out")


def test_pt_file_with_preset(tmp_path):
    ref = random_diffusers("wan-tiny-student-i2v")
    torch.save(ref.state_dict(), tmp_path / "student.pt")
    convert_cli(
        [str(tmp_path / "student.pt"), "--preset", "wan-tiny-student-i2v", "--out", str(tmp_path / "o")]
    )
    assert_same_as(ref, tmp_path / "o")


def test_pt_file_refuses_pickled_objects(tmp_path):
    torch.save({"weights": torch.zeros(1), "bad": object()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match=r"evil.pt: refused to unpickle .*never unpickles code"):
        convert_cli([str(tmp_path / "evil.pt"), "--preset", "wan-tiny-t2v", "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_key_mismatch_is_an_error(tmp_path, change):
    state = random_diffusers("wan-tiny-t2v").state_dict()
    if change == "extra":
        state["blocks.0.attn1.add_q_proj.weight"] = torch.ones(64, 64)
    elif change == "missing":
        del state["blocks.1.ffn.net.2.bias"]
    else:
        state["proj_out.bias"] = torch.zeros(3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(UserError, match=r"unexpected|missing|shape"):
        convert_cli(
            [str(tmp_path / "w.safetensors"), "--preset", "wan-tiny-t2v", "--out", str(tmp_path / "o")]
        )
    assert not (tmp_path / "o").exists()


def test_cli_error_exit_code(tmp_path):
    (tmp_path / "empty").mkdir()
    cmd = [sys.executable, str(REPO / "tools" / "convert_official.py"), "wan", str(tmp_path / "empty")]
    cmd += ["--preset", "wan-tiny-t2v", "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "no weights" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unused_norm_added_q_is_dropped(tmp_path):
    ref = random_diffusers("wan-tiny-i2v")
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    state["blocks.0.attn2.norm_added_q.weight"] = torch.ones(64)
    save_file(state, str(tmp_path / "w.safetensors"))
    convert_cli([str(tmp_path / "w.safetensors"), "--preset", "wan-tiny-i2v", "--out", str(tmp_path / "o")])
    assert_same_as(ref, tmp_path / "o")
