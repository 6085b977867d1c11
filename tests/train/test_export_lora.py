"""LoRA files: adapters built with peft on the tiny Wan DiT (as the LoRA task injects them), exported in each
format and loaded by the library that reads it. diffusers (``WanPipeline.load_lora_weights`` and
``WanTransformer3DModel.load_lora_adapter``) and peft (``PeftModel.from_pretrained``) on diffusers' base
model must give megavg's merged model's output; the Wan (ComfyUI) file round-trips through megavg's Wan
key converter, and applied by ComfyUI's rule (W + alpha / rank * up @ down, + diff, + diff_b) gives the
merged model too."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import megavg.models
from megavg.data import write_latent_shards
from megavg.models import registry
from megavg.models.wan.state_dict_adapter import to_diffusers, to_megavg
from megavg.tasks.adapt_lora import Args, inject_lora, lora_targets, merge_lora
from megavg.train.export_lora import collect_adapters, write
from megavg.utils.errors import UserError
from megavg.utils.lazy import materialize
from tests.distributed.launch import REPO
from tests.models.wan_reference import diffusers_config, inputs
from tests.tasks.test_adapt_chain import FAST

PRESET, RANK, ALPHA = "wan-tiny-t2v", 4, 8.0
FULL = ("patch_embed.weight", "patch_embed.bias", "head.linear.weight", "head.linear.bias")


@pytest.fixture(scope="module")
def run():
    return make_run(seed=0)


def make_run(seed: int) -> SimpleNamespace:
    """Base weights (random), peft-named adapters (B non-zero) and fully trained patch embedder / head."""
    torch.manual_seed(seed)
    base = megavg.models.build(PRESET)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    args = Args(rank=RANK, alpha=ALPHA)
    model = inject_lora(base, lora_targets(base, args.exclude), RANK, ALPHA)
    lora = {}
    for name, p in model.named_parameters():
        if ".lora_" in name:
            lora[name] = torch.randn_like(p) * 0.1
    full = {k: state[k] + 0.1 * torch.randn_like(state[k]) for k in FULL}
    return SimpleNamespace(base=state, lora=lora, full=full, args=args, x=inputs(base.args)[:3])


def megavg_output(base, trained, x):
    """megavg's merged model (base + alpha / rank * B @ A, fully trained layers copied) on ``x``."""
    model = megavg.models.build(PRESET).eval()
    merged = merge_lora(base, trained, ALPHA / RANK)  # lazy: one merged weight at a time
    model.load_state_dict({k: materialize(v) for k, v in merged.items()})
    with torch.no_grad():
        return model(*x)


def diffusers_base(base):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(**diffusers_config(megavg.models.build(PRESET).args)).eval()
    model.load_state_dict(to_diffusers(base), strict=True)
    return model


def diffusers_output(model, x):
    with torch.no_grad():
        return model(*x, return_dict=False)[0]


def assert_rel_close(actual, expected, tol=1e-4):
    err = ((actual - expected).norm() / expected.norm()).item()
    assert err < tol, err


def export(run, fmt, out, full=True):
    trained = {**run.lora, **(run.full if full else {})}
    args = run.args if full else Args(rank=RANK, alpha=ALPHA, train_fully=[])
    return write(collect_adapters(trained, lambda: run.base, args), fmt, out)


def test_diffusers_file_loads_in_diffusers_and_equals_the_merged_model(run, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    path = export(run, "diffusers", tmp_path / "lora.safetensors", full=False)
    expected = megavg_output(run.base, run.lora, run.x)
    assert all(k.startswith("transformer.") for k in load_file(path))
    model = diffusers_base(run.base)
    model.load_lora_adapter(str(path), prefix="transformer")
    assert_rel_close(diffusers_output(model, run.x), expected)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=diffusers_base(run.base),
                       scheduler=FlowMatchEulerDiscreteScheduler())  # fmt: skip
    pipe.load_lora_weights(str(path))
    assert_rel_close(diffusers_output(pipe.transformer, run.x), expected)
    assert not torch.allclose(diffusers_output(diffusers_base(run.base), run.x), expected, rtol=1e-3)


def test_one_file_per_expert_loads_into_each_transformer_of_a_two_expert_pipeline(run, tmp_path):
    """Wan 2.2 A14B: each expert's run exports its own file; diffusers loads the high-noise one into
    ``transformer`` and the low-noise one into ``transformer_2`` (``load_into_transformer_2=True``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    low = make_run(seed=1)
    high_file = export(run, "diffusers", tmp_path / "high_noise.safetensors", full=False)
    low_file = export(low, "diffusers", tmp_path / "low_noise.safetensors", full=False)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=diffusers_base(run.base),
                       transformer_2=diffusers_base(low.base), boundary_ratio=0.875,
                       scheduler=FlowMatchEulerDiscreteScheduler())  # fmt: skip
    pipe.load_lora_weights(str(high_file))
    pipe.load_lora_weights(str(low_file), load_into_transformer_2=True)
    assert_rel_close(diffusers_output(pipe.transformer, run.x), megavg_output(run.base, run.lora, run.x))
    assert_rel_close(diffusers_output(pipe.transformer_2, run.x), megavg_output(low.base, low.lora, run.x))


def test_diffusers_format_refuses_fully_trained_layers(run, tmp_path):
    with pytest.raises(UserError, match="trains head.linear, patch_embed fully .* use --format wan or peft"):
        export(run, "diffusers", tmp_path / "lora.safetensors")
    assert not list(tmp_path.iterdir())


def test_wan_file_round_trips_and_applies_as_comfyui_does(run, tmp_path):
    tensors = load_file(export(run, "wan", tmp_path / "lora.safetensors"))
    assert all(k.startswith("diffusion_model.") for k in tensors)
    assert "diffusion_model.blocks.0.self_attn.q.lora_down.weight" in tensors
    assert "diffusion_model.head.head.diff" in tensors and "diffusion_model.patch_embedding.diff_b" in tensors
    back = to_megavg({k.removeprefix("diffusion_model."): v for k, v in tensors.items()}, "original")
    for key, value in run.lora.items():  # X.lora_A.default.weight -> X.lora_down.weight
        module, rest = key.split(".lora_")
        name = {"A": "lora_down", "B": "lora_up"}[rest[0]]
        torch.testing.assert_close(back[f"{module}.{name}.weight"], value, rtol=0, atol=0)
        assert back[f"{module}.alpha"].item() == ALPHA
    # ComfyUI's rule on the original-layout base, then back to megavg names for the forward
    applied = {}
    for key, weight in run.base.items():
        module, kind = key.rsplit(".", 1)
        weight = weight.clone()
        if kind == "weight" and f"{module}.lora_up.weight" in back:
            up, down = back[f"{module}.lora_up.weight"], back[f"{module}.lora_down.weight"]
            weight += back[f"{module}.alpha"] / down.shape[0] * (up @ down)
        weight += back.get(f"{module}.{ {'weight': 'diff', 'bias': 'diff_b'}.get(kind, '') }", 0)
        applied[key] = weight
    model = megavg.models.build(PRESET).eval()
    model.load_state_dict(applied)
    with torch.no_grad():
        assert_rel_close(model(*run.x), megavg_output(run.base, {**run.lora, **run.full}, run.x))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_files_honour_the_umask(run, tmp_path, umask):
    """Like every other megavg output (safetensors alone creates 0600 files)."""
    old = os.umask(umask)
    try:
        files = [export(run, "wan", tmp_path / "lora.safetensors")]
        files.append(export(run, "peft", tmp_path / "peft") / "adapter_model.safetensors")
    finally:
        os.umask(old)
    assert [stat.S_IMODE(f.stat().st_mode) for f in files] == [0o666 & ~umask] * 2


def test_peft_folder_loads_with_peft_and_equals_the_merged_model(run, tmp_path):
    from peft import PeftModel, set_peft_model_state_dict

    folder = export(run, "peft", tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == RANK and config["lora_alpha"] == ALPHA
    assert sorted(config["modules_to_save"]) == ["patch_embedding", "proj_out"]
    expected = megavg_output(run.base, {**run.lora, **run.full}, run.x)
    model = PeftModel.from_pretrained(diffusers_base(run.base), folder)
    assert_rel_close(diffusers_output(model, run.x), expected)
    with safe_open(folder / "adapter_model.safetensors", "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no iterator
    fresh = PeftModel(diffusers_base(run.base), model.peft_config["default"])
    result = set_peft_model_state_dict(fresh, tensors)
    assert not result.unexpected_keys
    assert_rel_close(diffusers_output(fresh, run.x), expected)


def cli(*args):
    proc = subprocess.run(
        [sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_export_of_a_real_run_equals_its_consolidated_model(tmp_path):
    """A tiny adapt_3_lora run (EMA on, patch embedder and head trained fully): the peft export on
    diffusers' base equals tools/consolidate.py's merged EMA model; --raw exports other adapters; the
    diffusers format is refused in one line, exit 2."""
    torch.manual_seed(0)
    base = megavg.models.build(PRESET)
    base.save(tmp_path / "base")
    a = base.args
    samples = [
        {"latents": torch.randn(a.in_channels, 2, 4, 4), "text": torch.randn(5, a.text_dim)} for _ in range(4)
    ]
    write_latent_shards(samples, tmp_path / "latents", samples_per_shard=2)
    code, log = cli("-m", "megavg.train", "--config", "configs/train/adapt_3_lora.yaml", *FAST,
                    f"model.preset={PRESET}", f"model.init={tmp_path / 'base'}", "parallel.sp_size=1",
                    "task.args.rank=4", "task.args.alpha=8", "optimizer.lr=0.05", "model.ema.decay=0.5",
                    f"run.dir={tmp_path / 'run'}", f"data.shards={tmp_path / 'latents'}")  # fmt: skip
    assert code == 0, log
    assert cli("tools/consolidate.py", tmp_path / "run", "--out", tmp_path / "merged")[0] == 0
    for fmt, out in (("peft", "adapter"), ("wan", "lora.safetensors")):
        code, log = cli("tools/export_lora.py", tmp_path / "run", "--format", fmt, "--out", tmp_path / out)
        assert code == 0, log
    code, log = cli(
        "tools/export_lora.py", tmp_path / "run", "--format", "peft", "--out", tmp_path / "raw", "--raw"
    )
    assert code == 0, log
    code, log = cli(
        "tools/export_lora.py", tmp_path / "run", "--format", "diffusers", "--out", tmp_path / "d"
    )
    assert code == 2 and log.strip().splitlines()[-1].startswith("error: --format diffusers: the run trains")
    assert not (tmp_path / "d").exists()

    from peft import PeftModel

    merged = megavg.models.load(tmp_path / "merged").eval()
    x = inputs(merged.args)[:3]
    with torch.no_grad():
        expected = merged(*x)
    base_state = registry.load_state_dict(tmp_path / "base")
    model = PeftModel.from_pretrained(diffusers_base(base_state), tmp_path / "adapter")
    assert_rel_close(diffusers_output(model, x), expected)
    ema, raw = (load_file(tmp_path / p / "adapter_model.safetensors") for p in ("adapter", "raw"))
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)
