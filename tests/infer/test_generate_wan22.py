"""Two-expert (Wan 2.2 A14B) pipelines end to end on CPU: export with --transformer-2 --boundary, generate
T2V and I2V (no CLIP tokens: mask + image-latent channels only), the runner's expert placement, and the
diffusers export (transformer/ + transformer_2/ + model_index.json) converted back."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import megavg.infer.sampling
import megavg.models
from megavg.infer import generate, stages
from megavg.infer.export import main as export
from megavg.infer.pipeline import open_pipeline
from megavg.models.wan.experts import convert_cli, read_experts
from megavg.utils.errors import UserError
from tests.infer.tiny_pipeline import read_video, write_png

FAST = ["--dtype", "fp32", "--steps", "4", "--no-progress", "--size", "32", "48", "--frames", "8"]
BOUNDARY = 0.9  # 4 UniPC steps at shift 5: two at t >= 900 (high-noise expert), two below


def tiny_expert(i2v: bool, seed: int):
    """A tiny student expert on the tiny DC-AE-V's 4 channels; I2V: + 4 mask + 4 image latent, no CLIP."""
    torch.manual_seed(seed)
    args = dataclasses.replace(
        megavg.models.preset_args("wan-tiny-student-t2v"), in_channels=12 if i2v else 4, out_channels=4
    )
    model = megavg.models.build(args).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def pipes(tmp_path_factory, tiny_parts):
    root, paths = tmp_path_factory.mktemp("gen22"), tiny_parts
    write_png(root / "first.png", 32, 48)
    common = ["--vae", str(paths["vae"]), "--text-encoder", str(paths["text"]), "--dtype", "fp32"]
    for kind in ("t2v", "i2v"):
        for i in (1, 2):
            tiny_expert(kind == "i2v", seed=10 * i).save(root / f"{kind}_expert{i}")
        export(
            [
                "--transformer",
                str(root / f"{kind}_expert1"),
                "--transformer-2",
                str(root / f"{kind}_expert2"),
                "--boundary",
                str(BOUNDARY),
                "--guidance",
                "4",
                "--guidance-2",
                "3",
                *common,
                "--out",
                str(root / kind),
                "--diffusers",
            ]
        )
    return root


@pytest.fixture
def calls(monkeypatch):
    """The sampler's keyword arguments per call (then the real sampler runs)."""
    seen = []
    real = megavg.infer.sampling.sample

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(megavg.infer.sampling, "sample", recording)
    return seen


def forwards(monkeypatch) -> list[int]:
    """Which expert runs each forward: 1 (transformer/) or 2 (transformer_2/), hooked as they load."""
    order, load = [], stages.load_transformer

    def hooked(*a):
        model = load(*a)
        model.register_forward_pre_hook(lambda *_: order.append(1))
        return model

    load_2 = stages.load_transformer_2

    def hooked_2(*a):
        model = load_2(*a)
        model.register_forward_pre_hook(lambda *_: order.append(2))
        return model

    monkeypatch.setattr(stages, "load_transformer", hooked)
    monkeypatch.setattr(stages, "load_transformer_2", hooked_2)
    return order


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_two_expert_generate(pipes, tmp_path, calls, monkeypatch, kind):
    order = forwards(monkeypatch)
    image = ["--image", str(pipes / "first.png")] if kind == "i2v" else []
    result = generate.main(
        [str(pipes / kind), "--prompt", "a red fox", "--out", str(tmp_path / "v.mp4"), *image, *FAST]
    )
    assert read_video(tmp_path / "v.mp4").shape == (8, 32, 48, 3)
    kwargs = calls[0]
    assert (kwargs["boundary"], kwargs["guidance"], kwargs["guidance_2"]) == (BOUNDARY, 4.0, 3.0)
    assert order == [1, 1, 2, 2]  # batched CFG: one forward per step; the switch after two steps
    assert kwargs["image"] is None  # Wan 2.2 experts take no CLIP tokens
    assert (kwargs["condition"] is not None) == (kind == "i2v")
    assert result["experts"] == "both experts on cpu"


def test_one_expert_at_a_time_when_both_do_not_fit(pipes, tmp_path, monkeypatch):
    """The placement the runner picks when the two experts do not fit: only the active one on the device."""
    monkeypatch.setattr(stages, "experts_fit", lambda *_: False)
    moves = []
    real = stages.ExpertPlacement.activate

    def activate(self, model):
        moves.append(self.experts.index(model))
        real(self, model)

    monkeypatch.setattr(stages.ExpertPlacement, "activate", activate)
    result = generate.main([str(pipes / "t2v"), "--prompt", "a fox", "--out", str(tmp_path / "v.mp4"), *FAST])
    assert result["experts"] == "one expert at a time (the other on the CPU) on cpu"
    assert moves == [0, 1]


def test_guidance_2_without_second_expert_is_an_error(pipes, tiny_parts, tmp_path):
    with pytest.raises(UserError, match="--guidance-2"):
        export(
            [
                "--transformer",
                str(pipes / "t2v_expert1"),
                "--vae",
                str(tiny_parts["vae"]),
                "--text-encoder",
                str(tiny_parts["text"]),
                "--guidance-2",
                "3",
                "--out",
                str(tmp_path / "p"),
            ]
        )
    with pytest.raises(UserError, match="come together"):
        export(
            [
                "--transformer",
                str(pipes / "t2v_expert1"),
                "--transformer-2",
                str(pipes / "t2v_expert2"),
                "--vae",
                str(tiny_parts["vae"]),
                "--text-encoder",
                str(tiny_parts["text"]),
                "--out",
                str(tmp_path / "p"),
            ]
        )
    with pytest.raises(UserError, match="does not match"):
        export(
            [
                "--transformer",
                str(pipes / "t2v_expert1"),
                "--transformer-2",
                str(pipes / "i2v_expert2"),
                "--boundary",
                "0.9",
                "--vae",
                str(tiny_parts["vae"]),
                "--text-encoder",
                str(tiny_parts["text"]),
                "--out",
                str(tmp_path / "p"),
            ]
        )
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_diffusers_export_converts_back(pipes, tmp_path, kind):
    """PIPE/diffusers is a diffusers two-transformer layout: convert_official.py wan22 reads it back to the
    same weights and boundary; diffusers loads each expert without missing or unexpected keys."""
    from diffusers import WanTransformer3DModel

    folder = pipes / kind / "diffusers"
    assert json.loads((folder / "model_index.json").read_text())["boundary_ratio"] == BOUNDARY
    for name in ("transformer", "transformer_2"):
        _, info = WanTransformer3DModel.from_pretrained(folder / name, output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    convert_cli([str(folder), "--out", str(tmp_path / "back")])
    assert read_experts(tmp_path / "back").boundary_ratio == BOUNDARY
    for i, name in ((1, "transformer"), (2, "transformer_2")):
        original = megavg.models.load(pipes / f"{kind}_expert{i}").state_dict()
        back = megavg.models.load(tmp_path / "back" / name).state_dict()
        assert original.keys() == back.keys()
        assert all(torch.equal(original[k], back[k]) for k in original)
    pipe = open_pipeline(pipes / kind)
    assert pipe.manifest.transformer_2 == "transformer_2" and pipe.manifest.boundary == BOUNDARY
