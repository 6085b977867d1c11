"""Wan DiT cost table: tokens, analytic FLOPs and Ulysses traffic per resolution, plus a measured step.

    python benchmarks/bench_wan.py                                   # analytic table + tiny CPU timing
    python benchmarks/bench_wan.py --preset wan2.1-t2v-1.3b --device cuda --dtype bf16 --latent 16,20,30,52

The analytic part needs no device (models are built on ``meta``). The measured part times forward and
forward+backward of one preset on the given device with the layer backends of ``--linear/--attention``.
"""

from __future__ import annotations

import argparse
import time

import torch

from megavg.layers import LayerConfig
from megavg.models import build

# (label, preset, latent T, H, W): Wan VAE f8t4 (81 frames -> 21) vs DC-AE-V f32t4 (80 frames -> 20)
CASES = [
    ("480x832 Wan VAE", "wan2.1-t2v-14b", (21, 60, 104)),
    ("480x832 DC-AE-V", "dc-videogen-wan2.1-t2v-14b", (20, 15, 26)),
    ("720x1280 Wan VAE", "wan2.1-t2v-14b", (21, 90, 160)),
    ("704x1280 DC-AE-V", "dc-videogen-wan2.1-t2v-14b", (20, 22, 40)),
]
TEXT_LEN = 512


def forward_tflops(args, tokens: int) -> float:
    """Matmul FLOPs of one forward pass (one sample), in TFLOP."""
    d, f = args.dim, args.ffn_dim
    per_token = 2 * (4 * d * d + 2 * d * d + 2 * d * f)  # self q,k,v,o; cross q,o; ffn
    text_kv = 2 * 2 * d * d * TEXT_LEN
    attention = 2 * 2 * tokens * tokens * d + 2 * 2 * tokens * TEXT_LEN * d
    return args.num_layers * (per_token * tokens + text_kv + attention) / 1e12


def analytic_table(sp: int) -> None:
    print(f"| case | tokens | params | fwd TFLOP | Ulysses a2a MB/rank/layer (SP={sp}, bf16) |")
    print("|---|---|---|---|---|")
    for label, preset, latent in CASES:
        with torch.device("meta"):
            model = build(preset)
        tokens = model.num_tokens(latent)
        params = sum(p.numel() for p in model.parameters())
        # q,k,v out + attention output back: 4 tensors of [S/P, dim], (P-1)/P of each leaves the rank
        a2a_mb = 4 * tokens / sp * model.args.dim * 2 * (sp - 1) / sp / 1e6
        tflop = forward_tflops(model.args, tokens)
        print(f"| {label} | {tokens:,} | {params / 1e9:.2f} B | {tflop:.1f} | {a2a_mb:.1f} |")


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def measured(opts) -> None:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[opts.dtype]
    layers = LayerConfig(linear=opts.linear, attention=opts.attention)
    with torch.device(opts.device):
        model = build(opts.preset, layers=layers, grad_checkpointing=opts.checkpointing).to(dtype)
    a = model.args
    latents = torch.randn(1, a.in_channels, *opts.latent, device=opts.device, dtype=dtype)
    text = torch.randn(1, TEXT_LEN, a.text_dim, device=opts.device, dtype=dtype)
    image = torch.randn(1, 257, a.image_dim, device=opts.device, dtype=dtype) if a.is_i2v else None
    t = torch.tensor([500.0], device=opts.device)

    def step():
        model(latents, t, text, image).float().square().mean().backward()

    with torch.no_grad():
        fwd = timed(lambda: model(latents, t, text, image), opts.repeats, opts.device)
    fwd_bwd = timed(step, opts.repeats, opts.device)
    tokens = model.num_tokens(latents.shape)
    tflops = forward_tflops(a, tokens)
    print("\n| preset | device | dtype | latent | tokens | fwd s | fwd+bwd s | fwd+bwd TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {opts.preset} | {opts.device} | {opts.dtype} | {'x'.join(map(str, opts.latent))} | {tokens} "
        f"| {fwd:.4f} | {fwd_bwd:.4f} | {3 * tflops / fwd_bwd:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="wan-tiny-t2v")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--latent", type=lambda s: tuple(int(v) for v in s.split(",")), default=(4, 16, 16))
    parser.add_argument("--linear", default="auto")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sp", type=int, default=8, help="SP size for the traffic column")
    opts = parser.parse_args()
    analytic_table(opts.sp)
    measured(opts)


if __name__ == "__main__":
    main()
