"""DC-AE-V against independent references: a plain per-chunk conv loop, and a forward pass written from
the authors' key names and block strings (DESIGN.md §2-4) that consumes the authors' checkpoint layout.
Conversion runs through the real CLI (``tools/convert_official.py dcaev``) as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import megavg.models as mm
from megavg.models.dcaev.blocks import ChunkCausalConv3d
from megavg.models.dcaev.state_dict_adapter import authors_key_map

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- slow references (plain loops)
def ref_chunk_conv(x, weight, bias, chunk):
    """One chunk at a time: left pad = last p frames of the previous chunk (zeros first), right pad zeros."""
    p, q = weight.shape[2] // 2, weight.shape[3] // 2
    outs = []
    for start in range(0, x.shape[2], chunk):
        piece = x[:, :, start : start + chunk]
        left = x[:, :, start - p : start] if start > 0 else torch.zeros_like(piece[:, :, :p])
        padded = F.pad(torch.cat([left, piece], dim=2), (q, q, q, q, 0, p))
        outs.append(F.conv3d(padded, weight, bias))
    return torch.cat(outs, dim=2)


def ref_unshuffle(x, s, t):
    """Channel c*t*s*s + dt*s*s + dh*s + dw holds x[c, dt::t, dh::s, dw::s]."""
    planes = [
        x[:, c, dt::t, dh::s, dw::s]
        for c in range(x.shape[1])
        for dt in range(t)
        for dh in range(s)
        for dw in range(s)
    ]
    return torch.stack(planes, dim=1)


def ref_shuffle(x, s, t):
    B, C, T, H, W = x.shape
    out = x.new_zeros(B, C // (t * s * s), T * t, H * s, W * s)
    index = 0
    for c in range(out.shape[1]):
        for dt in range(t):
            for dh in range(s):
                for dw in range(s):
                    out[:, c, dt::t, dh::s, dw::s] = x[:, index]
                    index += 1
    return out


def ref_rms(x, weight, bias):
    y = x / torch.sqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-5)
    return y * weight[None, :, None, None, None] + bias[None, :, None, None, None]


@pytest.mark.parametrize("T,kt", [(16, 3), (19, 3), (5, 3), (12, 1)])
def test_chunk_causal_conv_matches_plain_per_chunk_loop(T, kt):
    conv = ChunkCausalConv3d(5, 7, kernel_s=3, kernel_t=kt, chunk=8)
    x = torch.randn(2, 5, T, 6, 5)
    expected = ref_chunk_conv(x, conv.weight, conv.bias, 8)
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the authors' layout and forward
ARCH = {  # the authors' description of a tiny f4t4c6 model, in their block-string form
    "in_channels": 3,
    "latent_channels": 6,
    "use_feature_cache": True,
    "encoder": {
        "in_channels": 3,
        "latent_channels": 6,
        "width_list": [8, 16, 16, 32],
        "depth_list": [0, 2, 1, 1],
        "block_type": ["ChunkCausalResBlock3d@3@3@8"] * 3 + ["ChunkCausalResBlock3d@3@3@2"],
        "downsample_block_type": [
            "ChunkCausalConvPixelUnshuffle@2@1@3@3@8",
            "ChunkCausalConvPixelUnshuffle@2@1@3@3@8",
            "ChunkCausalConvPixelUnshuffle@1@4@3@3@8",
        ],
        "project_in_block_type": "ChunkCausalConvPixelUnshuffle@2@1@3@3@8",
        "project_out_block_type": "ChunkCausalConvLayer3d@3@3@2",
        "norm": "rms3d",
        "act": "silu",
    },
    "decoder": {
        "width_list": [8, 16, 16, 32],
        "depth_list": [0, 2, 1, 1],
        "block_type": ["ChunkCausalResBlock3d@3@3@8"] * 3 + ["ChunkCausalResBlock3d@3@3@2"],
        "upsample_block_type": [
            "ChunkCausalConvPixelShuffle@2@1@3@3@8",
            "ChunkCausalConvPixelShuffle@2@1@3@3@8",
            "ChunkCausalConvPixelShuffle@1@4@3@3@2",
        ],
        "project_in_block_type": "ChunkCausalConvLayer3d@3@3@2",
        "project_out_block_type": "ChunkCausalConvPixelShuffle@2@1@3@3@8",
        "norm": "rms3d",
        "act": "silu",
    },
}


def _fields(block: str) -> list[int]:
    return [int(v) for v in block.split("@")[1:]]


class AuthorsReference:
    """Forward pass over an authors'-layout state dict, keys spelled as in their checkpoints."""

    def __init__(self, arch: dict, sd: dict[str, torch.Tensor]):
        self.arch, self.sd = arch, sd

    def conv(self, key, x, chunk):
        return ref_chunk_conv(x, self.sd[f"{key}.weight"], self.sd.get(f"{key}.bias"), chunk)

    def res(self, key, x, chunk):  # ResidualBlock(main=ResBlock(conv1 + SiLU, conv2 + norm), identity)
        h = F.silu(self.conv(f"{key}.main.conv1.conv", x, chunk))
        h = self.conv(f"{key}.main.conv2.conv", h, chunk)
        return x + ref_rms(
            h, self.sd[f"{key}.main.conv2.norm.weight"], self.sd[f"{key}.main.conv2.norm.bias"]
        )

    def encode(self, x):
        e = self.arch["encoder"]
        s, t, _, _, chunk = _fields(e["project_in_block_type"])
        x = ref_unshuffle(self.conv("encoder.project_in.conv.conv", x, chunk), s, t)
        for i, depth in enumerate(e["depth_list"]):
            for j in range(depth):
                x = self.res(f"encoder.stages.{i}.op_list.{j}", x, _fields(e["block_type"][i])[2])
            if i < len(e["depth_list"]) - 1 and depth > 0:
                s, t, _, _, chunk = _fields(e["downsample_block_type"][i])
                main = ref_unshuffle(
                    self.conv(f"encoder.stages.{i}.op_list.{depth}.main.conv.conv", x, chunk), s, t
                )
                short, out = ref_unshuffle(x, s, t), main.shape[1]
                g = short.shape[1] // out
                x = main + torch.stack([short[:, o * g : (o + 1) * g].mean(dim=1) for o in range(out)], dim=1)
        return self.conv("encoder.project_out.conv", x, _fields(e["project_out_block_type"])[2])

    def decode(self, z):
        d = self.arch["decoder"]
        x = self.conv("decoder.project_in.conv", z, _fields(d["project_in_block_type"])[2])
        for i in reversed(range(len(d["depth_list"]))):
            first = 0
            if i < len(d["depth_list"]) - 1 and d["depth_list"][i] > 0:
                s, t, _, _, chunk = _fields(d["upsample_block_type"][i])
                main = ref_shuffle(self.conv(f"decoder.stages.{i}.op_list.0.main.conv.conv", x, chunk), s, t)
                repeats = main.shape[1] * s * s * t // x.shape[1]
                x = main + ref_shuffle(x[:, torch.arange(x.shape[1] * repeats) // repeats], s, t)
                first = 1
            for j in range(d["depth_list"][i]):
                x = self.res(f"decoder.stages.{i}.op_list.{first + j}", x, _fields(d["block_type"][i])[2])
        x = F.silu(
            ref_rms(
                x,
                self.sd["decoder.project_out.op_list.0.weight"],
                self.sd["decoder.project_out.op_list.0.bias"],
            )
        )
        s, t, _, _, chunk = _fields(d["project_out_block_type"])
        return ref_shuffle(self.conv("decoder.project_out.op_list.2.conv.conv", x, chunk), s, t)


def authors_state_dict(arch: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights under the authors' key names, shapes derived from their architecture rules."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(key, cin, cout, bias=True):
        sd[f"{key}.weight"] = torch.randn(cout, cin, 3, 3, 3, generator=g) / (cin * 27) ** 0.5
        if bias:
            sd[f"{key}.bias"] = torch.randn(cout, generator=g) * 0.1

    def norm(key, c):
        sd[f"{key}.weight"] = 1 + 0.3 * torch.randn(c, generator=g)
        sd[f"{key}.bias"] = 0.3 * torch.randn(c, generator=g)

    def res(key, c):
        conv(f"{key}.main.conv1.conv", c, c)
        conv(f"{key}.main.conv2.conv", c, c, bias=False)
        norm(f"{key}.main.conv2.norm", c)

    e, d, lat = arch["encoder"], arch["decoder"], arch["latent_channels"]
    widths, depths, n = e["width_list"], e["depth_list"], len(e["width_list"])
    conv("encoder.project_in.conv.conv", 3, widths[1] // 4)  # stage 0 is empty: project_in -> width 1
    for i in range(n):
        for j in range(depths[i]):
            res(f"encoder.stages.{i}.op_list.{j}", widths[i])
        if i < n - 1 and depths[i] > 0:
            s, t = _fields(e["downsample_block_type"][i])[:2]
            conv(
                f"encoder.stages.{i}.op_list.{depths[i]}.main.conv.conv",
                widths[i],
                widths[i + 1] // (s * s * t),
            )
    conv("encoder.project_out.conv", widths[-1], lat)
    conv("decoder.project_in.conv", lat, widths[-1])
    for i in range(n):
        first = 0
        if i < n - 1 and depths[i] > 0:
            s, t = _fields(d["upsample_block_type"][i])[:2]
            conv(f"decoder.stages.{i}.op_list.0.main.conv.conv", widths[i + 1], widths[i] * s * s * t)
            first = 1
        for j in range(depths[i]):
            res(f"decoder.stages.{i}.op_list.{first + j}", widths[i])
    norm("decoder.project_out.op_list.0", widths[1])
    conv("decoder.project_out.op_list.2.conv.conv", widths[1], 3 * 4)
    return sd


def run_convert(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "tools" / "convert_official.py"), "dcaev", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def authors_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("authors")
    (folder / "arch.json").write_text(json.dumps(ARCH))
    ema, raw = authors_state_dict(ARCH, seed=1), authors_state_dict(ARCH, seed=2)
    torch.save({"model_state_dict": raw, "ema_model_state_dict": {"ema_model": ema}}, folder / "ckpt.pt")
    return folder, ema


@torch.no_grad()
def test_conversion_from_authors_layout_gives_identical_outputs(authors_files, tmp_path):
    folder, ema = authors_files
    proc = run_convert(folder / "ckpt.pt", "--arch", folder / "arch.json", "--out", tmp_path / "m")
    assert proc.returncode == 0, proc.stderr
    model = mm.load(tmp_path / "m")
    reference = AuthorsReference(ARCH, ema)  # EMA weights are preferred over model_state_dict
    x = torch.rand(1, 3, 16, 16, 16) * 2 - 1  # 2 chunks of 8 frames
    torch.testing.assert_close(model.encode(x), reference.encode(x), atol=1e-5, rtol=1e-5)
    z = torch.randn(1, 6, 4, 4, 4)
    torch.testing.assert_close(model.decode(z), reference.decode(z), atol=1e-5, rtol=1e-5)


def test_key_mapping_of_released_architecture_by_hand():
    with torch.device("meta"):
        model = mm.build("dc-ae-v-f32t4c32")
    mapping = authors_key_map(model)
    assert len(set(mapping.values())) == len(mapping) == len(model.state_dict())
    expected = {  # hand-written from the authors' module structure (DESIGN.md §4)
        "encoder.project_in.conv.weight": "encoder.project_in.conv.conv.weight",
        "encoder.stages.1.blocks.0.conv1.bias": "encoder.stages.1.op_list.0.main.conv1.conv.bias",
        "encoder.stages.1.blocks.4.conv2.weight": "encoder.stages.1.op_list.4.main.conv2.conv.weight",
        "encoder.stages.2.blocks.9.norm.bias": "encoder.stages.2.op_list.9.main.conv2.norm.bias",
        "encoder.stages.1.downsample.conv.weight": "encoder.stages.1.op_list.5.main.conv.conv.weight",
        "encoder.stages.5.downsample.conv.bias": "encoder.stages.5.op_list.4.main.conv.conv.bias",
        "encoder.project_out.weight": "encoder.project_out.conv.weight",
        "decoder.project_in.bias": "decoder.project_in.conv.bias",
        "decoder.stages.5.upsample.conv.weight": "decoder.stages.5.op_list.0.main.conv.conv.weight",
        "decoder.stages.5.blocks.0.conv1.weight": "decoder.stages.5.op_list.1.main.conv1.conv.weight",
        "decoder.stages.6.blocks.3.norm.weight": "decoder.stages.6.op_list.3.main.conv2.norm.weight",
        "decoder.project_out.norm.weight": "decoder.project_out.op_list.0.weight",
        "decoder.project_out.conv.conv.bias": "decoder.project_out.op_list.2.conv.conv.bias",
    }
    assert {k: mapping[k] for k in expected} == expected
    assert not any(k.startswith(("encoder.stages.0.", "decoder.stages.0.")) for k in mapping.values())
    sd = model.state_dict()
    assert sd["encoder.project_in.conv.weight"].shape == (64, 3, 3, 3, 3)  # 3 -> 256 / 2^2
    assert sd["encoder.stages.5.downsample.conv.weight"].shape == (256, 1024, 3, 3, 3)  # 1024 / 4


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("problem", ["truncated", "code", "missing_key", "wrong_shape", "not_found"])
def test_bad_checkpoints_exit_2_with_one_line(authors_files, tmp_path, problem):
    folder, ema = authors_files
    bad = tmp_path / "bad.pt"
    if problem == "truncated":
        data = (folder / "ckpt.pt").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif problem == "code":
        torch.save({"model_state_dict": _RunsCode()}, bad)
    elif problem == "missing_key":
        torch.save({"model_state_dict": {k: v for k, v in ema.items() if "stages.2.op_list.0" not in k}}, bad)
    elif problem == "wrong_shape":
        torch.save({"model_state_dict": {**ema, "encoder.project_out.conv.bias": torch.zeros(7)}}, bad)
    proc = run_convert(bad, "--arch", folder / "arch.json", "--out", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.pt" in lines[0], proc.stderr
    if problem == "missing_key":
        assert "missing" in lines[0] and "stages.2.op_list.0" in lines[0]
    if problem == "wrong_shape":
        assert "encoder.project_out.conv.bias has shape (7,), the architecture expects (6,)" in lines[0]
    if problem == "code":
        assert "refused to unpickle the Python object posix.getcwd" in lines[0], lines[0]
        assert "never unpickles code" in lines[0] and "weights_only=False" not in lines[0]
    assert not (tmp_path / "out").exists()
