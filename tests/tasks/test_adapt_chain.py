"""The AE-Adapt-V chain through the real trainer and consolidation, on tiny presets (one process each):
student -> phase 1 (alignment) -> phase 2 (patch/head) -> phase 3 (LoRA) -> merged model folder.
Checks what each phase may and may not change, and that the merged folder reproduces the LoRA model.
T2V runs on hand-made latent shards; I2V (68-in layout: noisy + mask + condition) on shards written by
``megavg.infer.precompute --teacher-vae --i2v`` from real clips with tiny DC-AE-V, Wan VAE, CLIP and umT5.

The phases train on the GPU layer paths - Transformer Engine linears with FP8 (every block), flash-attn,
activation checkpointing, bf16 - through the strict CPU stand-ins of TE and flash-attn (tests/standins,
docs/gpu.md); the torch/SDPA paths of the same tasks run in tests/tasks/test_adapt.py."""

import dataclasses
import subprocess
import sys

import torch

import megavg.models
from megavg.data import write_latent_shards
from megavg.data.make_shards import main as make_shards
from megavg.data.samples import real_clips
from megavg.infer.precompute import main as precompute
from megavg.layers import LayerConfig
from megavg.models import registry
from megavg.tasks import build_task
from megavg.tasks.adapt_lora import lora_targets
from megavg.train.checkpoint import read_latest
from megavg.train.config import load_config
from megavg.train.zero_checkpoint import ZeroCheckpoint
from megavg.utils.lazy import materialize
from tests.distributed.launch import REPO
from tests.gpu_standins import standin_env, use_standins
from tests.infer.tiny_encoders import tiny_clip, tiny_text_encoder, tiny_wan_vae
from tests.infer.tiny_pipeline import read_video, write_png

FAST = ["data.kind=latent", "schedule.steps=2", "logging.tensorboard=false"]
GPU_LAYERS = ["parallel.deepspeed=configs/deepspeed/zero3_bf16.json", "model.activation_checkpointing=true",
              "model.args.layers.linear=te", "model.args.layers.attention=flash",
              "model.args.layers.fp8.enabled=true", "model.args.layers.fp8.bf16_first_blocks=0",
              "model.args.layers.fp8.bf16_last_blocks=0"]  # fmt: skip
EXACT = LayerConfig(linear="te")  # merged vs LoRA forward: TE linears without FP8, float32 attention
EXACT_OVERRIDES = ["model.args.layers.linear=te", "model.args.layers.attention=auto",
                   "model.args.layers.fp8.enabled=false"]  # fmt: skip
NEW = {"patch_embed.weight", "patch_embed.bias", "head.linear.weight", "head.linear.bias"}


def run(*args):
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=standin_env()
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def train_and_export(tmp_path, name, config, shards, *overrides):
    run("-m", "megavg.train", "--config", f"configs/train/{config}.yaml", *FAST, *GPU_LAYERS, *overrides,
        f"run.dir={tmp_path / name}", f"data.shards={shards}")  # fmt: skip
    run("tools/consolidate.py", str(tmp_path / name), "--out", str(tmp_path / f"{name}-model"))
    return registry.load_state_dict(tmp_path / f"{name}-model")


def changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def run_chain(tmp_path, preset, shards, c_in, c_out, *lora_overrides):
    """make_student + the three phases + consolidation; asserts what each phase changes."""
    run("tools/make_student.py", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "student"),
        "--in-channels", str(c_in), "--out-channels", str(c_out))  # fmt: skip
    student = registry.load_state_dict(tmp_path / "student")
    assert not student["head.linear.weight"].any()
    common = [f"model.preset={preset}"]

    teacher = f"task.args.teacher={tmp_path / 'base'}"
    align = train_and_export(tmp_path, "align", "adapt_1_align", shards, *common,
                             f"model.init={tmp_path / 'student'}", teacher)  # fmt: skip
    assert changed(student, align) == {"patch_embed.weight", "patch_embed.bias"}

    head = train_and_export(tmp_path, "head", "adapt_2_head", shards, *common,
                            f"model.init={tmp_path / 'align-model'}", "parallel.sp_size=1",
                            "parallel.zero_init=false")  # fmt: skip
    assert changed(align, head) == NEW

    merged = train_and_export(tmp_path, "lora", "adapt_3_lora", shards, *common,
                              f"model.init={tmp_path / 'head-model'}", "parallel.sp_size=1",
                              "task.args.rank=4", "task.args.alpha=8", "optimizer.lr=0.05",
                              "model.ema.decay=0.5", *lora_overrides)  # fmt: skip
    run("tools/consolidate.py", str(tmp_path / "lora"), "--out", str(tmp_path / "lora-raw"), "--raw")
    targets = {
        f"{name}.weight"
        for name in lora_targets(megavg.models.build(preset), ["cross_attn", "text_embed", "head"])
    }
    assert set(merged) == set(head)
    assert changed(head, merged) - NEW == targets  # the LoRA moved every adapted weight, nothing else


def load_with_layers(folder, layers):
    """Model folder ``folder`` built with ``layers`` (TE's ``_extra_state`` entries are never stored)."""
    args = dataclasses.replace(registry.config_args(registry.read_config(folder)), layers=layers)
    model = registry.build(args)
    result = model.load_state_dict(registry.load_state_dict(folder), strict=False)
    assert not result.unexpected_keys and all(k.endswith("_extra_state") for k in result.missing_keys)
    return model


def assert_merged_equals_lora(tmp_path, *inputs, **kwargs):
    """The merged folder equals the LoRA model (peft forward, its TE wrapper) with the checkpoint's EMA
    adapters loaded (``model.ema``, as adapt_3_lora.yaml ships it); the ``--raw`` folder, with the trained
    adapters. Both in float32 on TE linears without FP8 (FP8 would round W + BA and W differently)."""
    with use_standins():
        _assert_merged_equals_lora(tmp_path, *inputs, **kwargs)


def _assert_merged_equals_lora(tmp_path, *inputs, **kwargs):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt_dir = tmp_path / "lora" / "checkpoints"
    raw = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), exclude_frozen_parameters=True)
    ema = ZeroCheckpoint(ckpt_dir / read_latest(ckpt_dir)).state_dict("ema")
    cfg = load_config(tmp_path / "lora" / "config.yaml", EXACT_OVERRIDES)
    outputs = []
    for adapters, folder in ((ema, "lora-model"), (raw, "lora-raw")):
        lora_model = build_task(cfg).build_model()
        lora_model.load_state_dict({k: materialize(v) for k, v in adapters.items()}, strict=False)
        plain = load_with_layers(tmp_path / folder, EXACT)
        with torch.no_grad():
            outputs.append(plain(*inputs, **kwargs))
            torch.testing.assert_close(outputs[-1], lora_model(*inputs, **kwargs), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)  # the EMA is not the raw


def assert_raw_merge_is_w_plus_scaled_ba(tmp_path, scale: float):
    """Every adapted weight of the ``--raw`` folder is the phase-2 weight + scale * B @ A of DeepSpeed's own
    reading of the checkpoint (zero_to_fp32), computed here in float64."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    raw = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / "lora" / "checkpoints"))
    assert any(".base_layer." in k for k in raw)  # exclude_frozen=false: the frozen layers are stored
    head, merged = (
        registry.load_state_dict(tmp_path / "head-model"),
        registry.load_state_dict(tmp_path / "lora-raw"),
    )
    downs = [k for k in raw if ".lora_A." in k]
    assert downs
    for down in downs:
        prefix = down.split(".lora_A.")[0]
        up = raw[down.replace(".lora_A.", ".lora_B.")].double()
        expected = head[f"{prefix}.weight"].double() + scale * up @ raw[down].double()
        torch.testing.assert_close(merged[f"{prefix}.weight"].double(), expected, rtol=1e-5, atol=1e-6)


def export_and_generate(tmp_path, *export_args, image=None):
    """The merged folder exported as a pipeline (tiny DC-AE-V ``vae``, umT5 ``umt5``) and run by
    ``generate`` (2 steps, bf16; layers ``auto``: TE linears and flash-attn, the stand-ins) on the CPU."""
    pipe, first = str(tmp_path / "pipe"), ["--image", str(image)] if image else []
    run("tools/export_pipeline.py", "--transformer", str(tmp_path / "lora-model"), "--out", pipe,
        "--vae", str(tmp_path / "vae"), "--text-encoder", str(tmp_path / "umt5"), *export_args)  # fmt: skip
    run("-m", "megavg.infer.generate", pipe, "--prompt", "bikes video", *first, "--size", "32", "32",
        "--frames", "8", "--steps", "2", "--no-progress", "--out", str(tmp_path / "out.mp4"))  # fmt: skip
    video = read_video(tmp_path / "out.mp4")
    assert video.shape[0] == 8 and video.std() > 0  # I2V keeps the first frame's aspect, T2V is 32 x 32
    assert image is not None or video.shape[1:3] == (32, 32)


def test_three_phases_and_merge(tmp_path):
    torch.manual_seed(0)
    base = megavg.models.build("wan-tiny-t2v")
    base.save(tmp_path / "base")
    c_student, c_base, text_dim = 8, base.args.in_channels, base.args.text_dim
    samples = [{"latents": torch.randn(c_student, 2, 4, 4), "text": torch.randn(5, text_dim),
                "teacher_latents": torch.randn(c_base, 2, 8, 8)} for _ in range(4)]  # fmt: skip
    write_latent_shards(samples, tmp_path / "latents", samples_per_shard=2)
    # the frozen base layers in the checkpoint too: they must not replace the merged weights
    run_chain(tmp_path, "wan-tiny-student-t2v", tmp_path / "latents", c_student, c_student,
              "checkpoint.exclude_frozen=false")  # fmt: skip
    assert_raw_merge_is_w_plus_scaled_ba(tmp_path, scale=8 / 4)
    x, t, text = torch.randn(1, c_student, 2, 4, 4), torch.tensor([300.0]), torch.randn(1, 5, text_dim)
    assert_merged_equals_lora(tmp_path, x, t, text)
    megavg.models.build("dc-ae-v-tiny", latent_channels=c_student, scaling_factor=0.5).save(tmp_path / "vae")
    tiny_text_encoder(tmp_path / "umt5", d_model=text_dim, umt5=True)
    export_and_generate(tmp_path)


def precompute_i2v_shards(tmp_path, c_latent, c_base, text_dim, image_dim):
    """Latent shards of two real clips with every I2V tensor, from tiny locally built encoders."""
    clips = [c for c in real_clips() if c.name in ("bikes.mp4", "carphone_pristine.mp4")]
    (tmp_path / "captions.csv").write_text(f"{clips[0].name},bikes video\n{clips[1].name},a car phone\n")
    make_shards([*map(str, clips), "--out", str(tmp_path / "videos"), "--captions",
                 str(tmp_path / "captions.csv"), "--samples-per-shard", "1"])  # fmt: skip
    megavg.models.build("dc-ae-v-tiny", latent_channels=c_latent, scaling_factor=0.5).save(tmp_path / "vae")
    tiny_text_encoder(tmp_path / "umt5", d_model=text_dim, umt5=True)
    tiny_wan_vae(tmp_path / "wan", z_dim=c_base)
    tiny_clip(tmp_path / "clip", hidden_size=image_dim)
    parts = precompute(["--vae", str(tmp_path / "vae"), "--shards", str(tmp_path / "videos"),
                        "--text-encoder", str(tmp_path / "umt5"), "--frames", "8", "--size", "32", "32",
                        "--teacher-vae", str(tmp_path / "wan"), "--i2v", "--samples-per-shard", "1",
                        "--image-encoder", str(tmp_path / "clip"),
                        "--out", str(tmp_path / "latents")])  # fmt: skip
    assert len(parts) == 1
    return parts[0]


def test_i2v_three_phases_and_merge_on_precomputed_shards(tmp_path):
    torch.manual_seed(0)
    base = megavg.models.build("wan-tiny-i2v")  # 12 in = 4 noisy + 4 mask + 4 condition
    base.save(tmp_path / "base")
    args = megavg.models.build("wan-tiny-student-i2v").args  # 20 in = 8 noisy + 4 mask + 8 condition, 8 out
    c = args.out_channels
    assert args.in_channels == 2 * c + 4 and base.args.in_channels == 3 * 4
    shards = precompute_i2v_shards(tmp_path, c, 4, args.text_dim, args.image_dim)
    run_chain(tmp_path, "wan-tiny-student-i2v", shards, args.in_channels, c)
    x, t = torch.randn(1, args.in_channels, 2, 8, 8), torch.tensor([300.0])
    text, image = torch.randn(1, 5, args.text_dim), torch.randn(1, 5, args.image_dim)
    assert_merged_equals_lora(tmp_path, x, t, text, image=image)
    write_png(tmp_path / "first.png", 30, 40)
    export_and_generate(tmp_path, "--image-encoder", str(tmp_path / "clip"), image=tmp_path / "first.png")
