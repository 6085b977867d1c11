"""The step FLOP count (perf/tflops_per_gpu, perf/mfu) against a hand count of the tiny LoRA student.

Convention (docs/validation.md): a GEMM of m x k by k x n is 2 m k n FLOPs. Forward: every GEMM.
Backward: the input-gradient GEMM (same size) only where the layer's input needs a gradient, the
weight-gradient GEMM only for trained weights (frozen layers: none). Attention: 4 B Sq Sk d forward
(q k^T and p v), twice that backward when any of q, k, v needs a gradient. No recompute.
"""

from __future__ import annotations

import math

import torch

import megavg.models
from megavg.tasks import build_task
from megavg.train.config import load_config
from megavg.train.flops import StepFlops, mfu_peaks, table_peak
from tests.distributed.launch import REPO


def gemm(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def frozen(m, k, n, grad_in):
    """A frozen linear: forward, plus the input gradient when its input needs one."""
    return gemm(m, k, n) * (2 if grad_in else 1)


def trained(m, k, n, grad_in):
    """A fully trained linear: forward, weight gradient, input gradient when needed."""
    return gemm(m, k, n) * (3 if grad_in else 2)


def lora(m, k, n, r, grad_in):
    """Frozen base W (k -> n) + trained A (k -> r) and B (r -> n). B's input (A's output) needs a
    gradient (A trains): B gets weight and input gradients; A its weight gradient, and its input gradient
    together with W's only when the layer's input needs one."""
    forward = gemm(m, k, n) + gemm(m, k, r) + gemm(m, r, n)
    backward = 2 * gemm(m, r, n) + gemm(m, k, r)
    if grad_in:
        backward += gemm(m, k, n) + gemm(m, k, r)
    return forward + backward


def attention(b, sq, sk, d):
    return 3 * 4 * b * sq * sk * d  # forward + backward (2x)


def hand_count(B, T, H, W, L, r):
    """wan-tiny-student-t2v (dim 64, ffn 128, freq 32, text 32, 8 -> 8 channels, patch 1, 2 blocks) under
    adapt_lora: LoRA on every linear but cross-attention, text embedding and head; patch embedding and
    head linear trained fully; the rest frozen."""
    d, f, freq, text_dim, c_in, c_out, blocks = 64, 128, 32, 32, 8, 8, 2
    S = T * H * W  # patch 1: one token per latent position
    n = 2 * gemm(B * S, c_in, d)  # patch embed (1x1x1 conv): forward + weight gradient; latents need none
    n += lora(B, freq, d, r, False) + lora(B, d, d, r, True) + lora(B, d, 6 * d, r, True)  # time embed
    n += frozen(B * L, text_dim, d, False) + frozen(B * L, d, d, False)  # text embed: no gradient at all
    block = 4 * lora(B * S, d, d, r, True) + attention(B, S, S, d)  # self-attention q, k, v, o
    block += frozen(B * S, d, d, True) + 2 * frozen(B * L, d, d, False)  # cross q; k, v on (constant) text
    block += attention(B, S, L, d) + frozen(B * S, d, d, True)  # cross attention (q needs grad); o
    block += lora(B * S, d, f, r, True) + lora(B * S, f, d, r, True)  # FFN
    n += blocks * block
    n += trained(B * S, d, c_out, True)  # head linear
    return n


def lora_config(*overrides):
    return load_config(
        REPO / "configs/train/adapt_3_lora.yaml",
        ["model.preset=wan-tiny-student-t2v", "task.args.rank=4", "task.args.alpha=8", *overrides],
    )


def test_lora_step_flops_equal_the_hand_count():
    cfg = lora_config("parallel.sp_size=1")
    flops = StepFlops(cfg, build_task(cfg))
    batch = {"latents": torch.zeros(2, 8, 2, 3, 4), "text": torch.zeros(2, 7, 32)}
    assert flops(batch) == hand_count(2, 2, 3, 4, 7, 4)
    other = {"latents": torch.zeros(1, 8, 1, 4, 4), "text": torch.zeros(1, 5, 32)}
    assert flops(other) == hand_count(1, 1, 4, 4, 5, 4)  # a second shape: its own count
    assert len(flops.cache) == 2
    flops(batch)
    assert len(flops.cache) == 2  # traced once per shape


def test_init_folder_and_checkpointing_change_nothing(tmp_path):
    """``model.init`` (the architecture read from the folder) with activation checkpointing on: the same
    count (no recompute)."""
    import megavg.models

    megavg.models.build("wan-tiny-student-t2v").save(tmp_path / "init")
    cfg = lora_config(
        "model.preset=", f"model.init={tmp_path / 'init'}", "model.activation_checkpointing=true",
        "parallel.sp_size=1",
    )  # fmt: skip
    batch = {"latents": torch.zeros(1, 8, 2, 2, 2), "text": torch.zeros(1, 3, 32)}
    assert StepFlops(cfg, build_task(cfg))(batch) == hand_count(1, 2, 2, 2, 3, 4)


def test_sp_ranks_share_the_flops():
    cfg = lora_config("parallel.sp_size=2")
    batch = {"latents": torch.zeros(1, 8, 2, 4, 4), "text": torch.zeros(1, 5, 32)}
    assert StepFlops(cfg, build_task(cfg))(batch) == hand_count(1, 2, 4, 4, 5, 4) // 2


def test_peak_table():
    assert table_peak("NVIDIA H100 80GB HBM3", fp8=False) == 989.0
    assert table_peak("NVIDIA H100 PCIe", fp8=True) == 1513.0
    assert table_peak("NVIDIA H200", fp8=True) == 1979.0
    assert table_peak("NVIDIA A100-SXM4-80GB", fp8=False) == 312.0
    assert table_peak("NVIDIA B200", fp8=False) == 2250.0
    assert table_peak("NVIDIA GeForce RTX 4090", fp8=False) is None


def test_mfu_is_against_the_bf16_peak_also_for_fp8_runs():
    """Peers report MFU against the bf16 peak: an FP8 run's ``perf/mfu`` too (its FP8-peak figure is a
    second, separately named metric); ``logging.peak_tflops`` replaces the bf16 peak."""
    h100 = "NVIDIA H100 80GB HBM3"
    fp8 = ["model.args.layers.fp8.enabled=true"]
    assert mfu_peaks(lora_config(*fp8), h100) == {"perf/mfu": 989.0, "perf/mfu_fp8_peak": 1979.0}
    assert mfu_peaks(lora_config(), h100) == {"perf/mfu": 989.0}
    assert mfu_peaks(lora_config("logging.peak_tflops=500"), None) == {"perf/mfu": 500.0}
    assert mfu_peaks(lora_config(*fp8), None) == {}  # CPU


def conv_flops_by_hooks(model, video) -> tuple[int, int]:
    """(all Conv3d forward FLOPs, the first conv's), counted on a real forward: 2 x output elements x
    in_channels / groups x kernel volume per convolution."""
    counts = []

    def hook(module, inputs, output):
        kernel = module.in_channels // module.groups * math.prod(module.kernel_size)
        counts.append(2 * output.numel() * kernel)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    with torch.no_grad():
        model(video)
    for handle in handles:
        handle.remove()
    return sum(counts), counts[0]


def test_dcaev_step_flops_match_a_hand_count_of_its_convolutions():
    """DC-AE-V (the demo's task) trains every weight: each conv costs forward + weight gradient + input
    gradient, except that the first conv's input (the video) needs no gradient."""
    cfg = load_config(REPO / "configs/train/dcaev_tiny_test.yaml")
    task = build_task(cfg)
    batch = {"video": torch.zeros(2, 3, 8, 32, 32)}
    forward, first = conv_flops_by_hooks(megavg.models.build("dc-ae-v-tiny"), batch["video"])
    assert StepFlops(cfg, task)(batch) == 3 * forward - first
