"""Generation cost: measured per stage with tiny components, and computed per step for the 14B models.

    PYTHONPATH=. python benchmarks/bench_generate.py                     # CPU, tiny components
    PYTHONPATH=. python benchmarks/bench_generate.py --device cuda --dtype bf16 --size 256 384 --frames 32
    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/bench_generate.py --vs-diffusers   # vs diffusers' loop

Measured: the tiny DiT / DC-AE-V / umT5 / CLIP of the tests (``tests/infer/tiny_pipeline.py``) exported
with ``tools/export_pipeline.py`` and run through ``megavg.infer.generate`` for T2V and I2V; each stage's
wall time and peak memory (host RSS on CPU, allocated GPU memory on CUDA) as the runner reports them.
Computed (no device, models on ``meta``): tokens, FLOPs per denoising step (two forwards with CFG) and
weight / activation memory of DC-VideoGen-14B vs Wan-2.1-14B at 720p and 2160x3840, from the presets,
with ``bench_wan``'s FLOP count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_wan import TEXT_LEN, forward_tflops  # noqa: E402

from megavg.models import build  # noqa: E402

# (label, preset, latent T, H, W): Wan VAE f8t4 on 81 frames (21 latent frames) with patch 2;
# DC-AE-V f32t4 on 80 frames (20) with patch 1. 2160 is not a multiple of 32: DC-AE-V runs 2176x3840.
CASES = [
    ("720p Wan-2.1-14B", "wan2.1-t2v-14b", (21, 90, 160)),
    ("720p DC-VideoGen-14B", "dc-videogen-wan2.1-t2v-14b", (20, 22, 40)),
    ("2160x3840 Wan-2.1-14B", "wan2.1-t2v-14b", (21, 270, 480)),
    ("2160x3840 DC-VideoGen-14B", "dc-videogen-wan2.1-t2v-14b", (20, 68, 120)),
]
GIB = 2**30


def block_activation_gib(args, tokens: int, bytes_per: int = 2) -> float:
    """Live activations of one block's inference forward (bf16, flash attention: no S x S matrix): the
    residual, its normed copy, q, k, v, the attention output and the FFN hidden layer."""
    return tokens * (6 * args.dim + args.ffn_dim) * bytes_per / GIB


def encoder_gib() -> dict[str, float]:
    """bf16 umT5-XXL encoder and fp32 CLIP ViT-H/14 vision tower, built on meta from their configs."""
    import transformers

    umt5 = transformers.UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                   num_heads=64, feed_forward_proj="gated-gelu")  # fmt: skip
    clip = transformers.CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                         num_attention_heads=16, image_size=224, patch_size=14)  # fmt: skip
    with torch.device("meta"):
        t5 = sum(p.numel() for p in transformers.UMT5EncoderModel(umt5).parameters())
        vit = sum(p.numel() for p in transformers.CLIPVisionModel(clip).parameters())
    return {"umT5-XXL encoder (bf16)": 2 * t5 / GIB, "CLIP ViT-H/14 vision (fp32)": 4 * vit / GIB}


def analytic() -> None:
    print("Per denoising step, computed (CFG: 2 forwards; bf16 weights; one sample):\n")
    print("| case | latent | tokens | TFLOP/step | DiT weights GiB | activations/block GiB |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for label, preset, latent in CASES:
        with torch.device("meta"):
            model = build(preset)
        tokens = model.num_tokens(latent)
        tflop = 2 * forward_tflops(model.args, tokens)
        weights = 2 * sum(p.numel() for p in model.parameters()) / GIB
        act = block_activation_gib(model.args, tokens)
        rows[label] = tflop
        shape = "x".join(map(str, latent))
        print(f"| {label} | {shape} | {tokens:,} | {tflop:,.0f} | {weights:.1f} | {act:.2f} |")
    for res in ("720p", "2160x3840"):
        ratio = rows[f"{res} Wan-2.1-14B"] / rows[f"{res} DC-VideoGen-14B"]
        print(f"\n{res}: DC-VideoGen-14B needs {ratio:.1f}x fewer FLOPs per step than Wan-2.1-14B")
    with torch.device("meta"):
        vae = build("dc-ae-v-f32t4c32")
    sizes = {"DC-AE-V f32t4c32 (bf16)": 2 * sum(p.numel() for p in vae.parameters()) / GIB, **encoder_gib()}
    print("\n| other component | weights GiB |\n|---|---|")
    for name, gib in sizes.items():
        print(f"| {name} | {gib:.1f} |")
    print(f"\n(text context: {TEXT_LEN} tokens; FLOPs count matmuls only)")


def measured(opts) -> None:
    from megavg.infer import generate
    from megavg.infer.export import main as export
    from tests.infer.tiny_pipeline import build_components, write_png

    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = Path(tmp)
        parts = build_components(root / "parts")
        write_png(root / "first.png", opts.size[0], opts.size[1])
        common = ["--vae", str(parts["vae"]), "--text-encoder", str(parts["text"]), "--dtype", opts.dtype]
        export(["--transformer", str(parts["t2v"]), *common, "--out", str(root / "t2v")])
        export(["--transformer", str(parts["i2v"]), *common, "--image-encoder", str(parts["clip"]),
                "--out", str(root / "i2v")])  # fmt: skip
        run = ["--prompt", "a red fox in snow", "--size", *map(str, opts.size), "--frames",
               str(opts.frames), "--steps", str(opts.steps), "--dtype", opts.dtype, "--device", opts.device,
               "--no-progress"]  # fmt: skip
        results = {
            "T2V": generate.main([str(root / "t2v"), *run, "--out", str(root / "t2v.mp4")]),
            "I2V": generate.main(
                [str(root / "i2v"), *run, "--image", str(root / "first.png"), "--out", str(root / "i2v.mp4")]
            ),  # fmt: skip
        }
    kind = "GPU allocated" if opts.device.startswith("cuda") else "host RSS"
    size = f"{opts.size[0]}x{opts.size[1]}x{opts.frames}"
    print(f"\nMeasured, tiny components, {size}, {opts.steps} steps, {opts.device} {opts.dtype}:\n")
    print(f"| mode | stage | seconds | peak MiB ({kind}) |\n|---|---|---|---|")
    for mode, result in results.items():
        for name, sec, peak in result["stages"]:
            print(f"| {mode} | {name} | {sec:.3f} | {peak:.0f} |")
        print(f"| {mode} | denoise per step | {result['seconds_per_step']:.4f} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 96))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--skip-measured", action="store_true")
    parser.add_argument("--vs-diffusers", action="store_true",
                        help="only: vs diffusers' loop on the same weights (vs_diffusers.py)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="--vs-diffusers: alternating rounds (>= 5)")
    parser.add_argument(
        "--cache-threshold", type=float, default=0.05, help="--vs-diffusers: FBCache threshold"
    )
    parser.add_argument("--no-sp", action="store_true", help="--vs-diffusers: skip the 2-process SP run")
    parser.add_argument("--no-compile", action="store_true", help="--vs-diffusers: skip the compiled run")
    parser.add_argument("--core", action="store_true",
                        help="--vs-diffusers: only diffusers, megavg exact and megavg compiled")  # fmt: skip
    opts = parser.parse_args()
    if opts.vs_diffusers:
        from vs_diffusers import compare

        compare(
            opts.device, opts.rounds, opts.cache_threshold, not opts.no_sp, not opts.no_compile, opts.core
        )
        return
    analytic()
    if not opts.skip_measured:
        measured(opts)


if __name__ == "__main__":
    main()
