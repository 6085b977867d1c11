"""The planner: exact parameter counts, traced activations and FLOPs against independent references,
the CLI contract (``--json`` keys, one-line errors with exit 2)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from megavg.models import build
from megavg.plan import layouts, model
from megavg.plan.__main__ import main as plan_main
from megavg.plan.layouts import Request
from megavg.utils.errors import run_cli
from megavg.utils.meta_trace import trace_forward
from tests.distributed.launch import REPO


def facts(preset: str, task: str = "flow_matching") -> model.ModelFacts:
    req = Request(preset, 1, 8, 80, (704, 1280), 80, task=task)
    return model.model_facts(layouts.config(req, layouts.Layout(1, False, layouts.BF16)))


@pytest.mark.parametrize(
    "preset, params",  # diffusers' exact counts (DESIGN.md section 7)
    [
        ("wan2.1-t2v-1.3b", 1_418_996_800),
        ("wan2.1-t2v-14b", 14_288_491_584),
        ("wan2.1-i2v-14b", 16_394_878_784),
    ],
)
def test_parameter_counts(preset, params):
    found = facts(preset)
    assert found.params == params == found.trainable
    assert found.lora == 0


def test_lora_counts():
    """adapt_lora: rank 256 on every linear except cross-attention, text embedding and head (per block:
    self q,k,v,o and ffn fc1, fc2; and the three time-embedding linears), plus the fully trained patch
    embedder and output linear."""
    found = facts("dc-videogen-wan2.1-t2v-14b", "adapt_lora")
    d, f, r, layers = 5120, 13824, 256, 40
    time_embed = r * ((256 + d) + (d + d) + (d + 6 * d))
    lora = layers * r * (4 * (d + d) + (d + f) + (f + d)) + time_embed
    assert found.lora == lora
    assert found.trainable == lora + (32 * d + d) + (d * 32 + 32)  # patch_embed, head.linear
    assert found.params == facts("dc-videogen-wan2.1-t2v-14b").params + lora


def test_traced_activations_match_a_real_forward():
    """Saved-for-backward bytes from the meta trace vs a real CPU forward of the same model."""
    torch.manual_seed(0)
    real = build("wan-tiny-t2v", dim=128)
    latents, t, text = torch.randn(1, 4, 2, 16, 16), torch.tensor([500.0]), torch.randn(1, 512, 32)
    params = {p.untyped_storage().data_ptr() for p in real.parameters()}
    seen = {}

    def pack(x):
        if x.untyped_storage().data_ptr() not in params:
            seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        real(latents, t, text)
    with torch.device("meta"):
        meta = build("wan-tiny-t2v", dim=128)
        inputs = (torch.empty(1, 4, 2, 16, 16), torch.empty(1), torch.empty(1, 512, 32))
    traced = trace_forward(meta, lambda: meta(*inputs)).saved_bytes
    assert abs(traced - sum(seen.values())) <= 0.05 * sum(seen.values())


def test_flops_match_the_hand_formula():
    """FLOPs counted on the traced 14B student vs benchmarks/bench_wan.py's hand-written formula."""
    spec = importlib.util.spec_from_file_location("bench_wan", REPO / "benchmarks" / "bench_wan.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    req = Request("dc-videogen-wan2.1-t2v-14b", 1, 8, 80, (704, 1280), 80)
    cfg = layouts.config(req, layouts.Layout(1, False, layouts.BF16))
    found = model.model_facts(cfg)
    tokens = model.tokens_per_sample(found.args, 80, (704, 1280))
    assert tokens == 20 * 22 * 40
    fwd = model.WanTracer(cfg, 1, torch.bfloat16).forward(found, tokens, sp=1)
    expected = bench.forward_tflops(found.args, tokens) * 1e12
    assert abs(fwd.flops - expected) <= 0.02 * expected
    assert model.WanTracer(cfg, 1, torch.bfloat16).forward(found, tokens, sp=8).flops == fwd.flops // 8


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m megavg.plan ARGS`` in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        run_cli(plan_main, list(args))
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr()
    return code, out.out, out.err


TINY = ["--preset", "wan-tiny-t2v", "--nodes", "1", "--gpus-per-node", "4", "--gpu-memory-gib", "1"]


def test_cli_json(capsys):
    code, out, err = cli(capsys, *TINY, "--size", "256", "256", "--frames", "13", "--json")
    assert code == 0, err
    result = json.loads(out)
    mem = result["per_gpu_gib"]
    assert {"model_states", "activations", "total"} <= set(mem)
    parts = ("parameters", "gradients", "optimizer_states", "lora")
    assert mem["model_states"] == pytest.approx(sum(mem[k] for k in parts))
    speeds = [layout["samples_per_s"] for layout in result["layouts"]]
    assert speeds and speeds == sorted(speeds, reverse=True)
    assert all(layout["per_gpu_gib"]["total"] <= 0.9 * 1 for layout in result["layouts"])
    assert any("parallel.sp_size=" in o for o in result["layouts"][0]["overrides"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--size", "256", "256", "--frames", "13", "--sp", "3"],
            "--sp 3: does not divide the 4 attention heads",
        ),
        (["--size", "250", "256", "--frames", "13"], "--size 250 256: height and width must be multiples"),
        (["--size", "256", "256", "--frames", "0"], "--frames: must be >= 1"),
        (
            ["--size", "256", "256", "--frames", "13", "--task", "dcaev_recon"],
            "--task dcaev_recon: needs a dcaev",
        ),
        (["--size", "256", "256"], "the following arguments are required: --frames"),
    ],
)
def test_cli_errors(capsys, extra, message):
    code, out, err = cli(capsys, *TINY, *extra)
    assert code == 2 and not out
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_14b_lora_model_states_by_hand():
    """README's hand calculation: ZeRO-3 over 8 GPUs, bf16 parameters for all, fp32 master + moments and
    bf16 gradients for the trainable ones only."""
    from megavg.plan.memory import model_states
    from megavg.plan.spec import Run

    found = facts("dc-videogen-wan2.1-t2v-14b", "adapt_lora")
    states = model_states(found, {}, Run(world=8, nodes=1, c=2))
    assert states["parameters"] == 14_288_163_872 * 2 / 8
    assert states["lora"] == 820_576_256 * (2 + 2 + 12) / 8
    assert states["gradients"] == 332_832 * 2 / 8
    assert states["optimizer_states"] == 332_832 * 12 / 8
    offloaded = model_states(
        found, {"zero_optimization": {"offload_optimizer": {}, "offload_param": {}}}, Run(8, 1, 2)
    )
    assert offloaded["model_states"] == 0


def test_dcaev_plan(capsys):
    """DC-AE-V: no per-block checkpointing layouts; temporal SP up to one rank per chunk of 8 frames."""
    code, out, err = cli(
        capsys, "--preset", "dc-ae-v-tiny", "--task", "dcaev_recon", "--nodes", "1", "--gpus-per-node", "4",
        "--gpu-memory-gib", "80", "--size", "64", "64", "--frames", "20", "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["params"] == sum(p.numel() for p in build("dc-ae-v-tiny").parameters())
    assert {r["sp"] for r in result["layouts"]} == {1, 2} and not any(
        r["checkpointing"] for r in result["layouts"]
    )
    assert result["per_gpu_gib"]["activations"] > 0


def test_config_file_is_planned_as_written(capsys, tmp_path):
    """``--config``: the YAML's preset, task and LoRA rank are planned (the 14B count of test_lora_counts at
    rank 64), and a config that turns checkpointing on gets an explicit off in the no-checkpointing
    layouts' overrides."""
    d, f, r, layers = 5120, 13824, 64, 40
    lora = layers * r * (4 * (d + d) + (d + f) + (f + d)) + r * ((256 + d) + (d + d) + (d + 6 * d))
    code, out, err = cli(capsys, "--config", "configs/train/finetune_lora_14b.yaml", "--nodes", "1",
                         "--gpus-per-node", "8", "--gpu-memory-gib", "80", "--size", "704", "1280",
                         "--frames", "80", "--json")  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert (result["preset"], result["task"], result["lora_params"]) == ("dc-videogen-wan2.1-t2v-14b",
                                                                         "adapt_lora", lora)  # fmt: skip
    off = [r for r in result["layouts"] if not r["checkpointing"]]
    assert off and all("model.activation_checkpointing=false" in r["overrides"] for r in off)
    (tmp_path / "bad.yaml").write_text("task:\n  name: dcaev_eval\n")
    code, out, err = cli(capsys, "--config", str(tmp_path / "bad.yaml"), *TINY[2:], "--size", "64", "64",
                         "--frames", "8")  # fmt: skip
    assert code == 2 and "sets no model.preset" in err


def test_offloaded_states_are_counted_on_the_host():
    """With ZeRO-3 offload of parameters and optimizer, the host holds what the GPUs no longer do: the
    bf16 parameters and, for trainable ones, bf16 gradients + fp32 master and moments (per GPU, 1/N)."""
    from megavg.plan.memory import model_states
    from megavg.plan.spec import Run

    found = facts("dc-videogen-wan2.1-t2v-14b", "adapt_lora")
    offload = {"zero_optimization": {"offload_optimizer": {}, "offload_param": {}}}
    host = model_states(found, offload, Run(8, 1, 2))["host_offload"]
    assert host == (found.params * 2 + found.trainable * (2 + 12)) / 8
    assert model_states(found, {}, Run(8, 1, 2))["host_offload"] == 0
