"""DC-AE-V benchmark (CPU, random weights): streaming decode memory/speed vs length, full-pass speed.

    python benchmarks/bench_dcaev.py                       # streaming table + f32t4c32 full pass
    python benchmarks/bench_dcaev.py --skip-full           # streaming table only

Memory is the peak resident set size (``VmHWM``, see ``megavg.utils.memory``) of a fresh subprocess
per measurement, minus its peak after building the model and decoding one warm-up chunk: the extra
memory that decoding *that many frames* needed (torch's CPU allocations are invisible to tracemalloc,
RSS sees them). Streamed chunks are consumed (reduced to a checksum) and dropped, as a writer would do.
The full-pass rows decode the same latents in one call, for contrast. Target: streaming peak at 640
frames within 1.1x of 80 frames.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

import megavg.models as mm
from megavg.models.dcaev.streaming import StreamingDecoder
from megavg.utils.memory import peak_rss_mib


def _random_model(preset: str, seed: int = 0):
    """Build on meta, then fill with small random weights (fast even for 2 B parameters)."""
    with torch.device("meta"):
        model = mm.build(preset)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif p.ndim > 1:
                p.normal_(0, (p[0].numel()) ** -0.5, generator=g)
            else:
                p.zero_()
    return model.eval()


def child_decode(preset: str, frames: int, size: int, mode: str) -> dict:
    """Decode ``frames`` frames of ``size``x``size`` (streaming or one pass); report memory and speed."""
    torch.set_num_threads(1)
    model = _random_model(preset)
    s, t = model.spatial_compression, model.temporal_compression
    latents = torch.randn(1, model.args.latent_channels, frames // t, size // s, size // s)
    with torch.inference_mode():
        model.decode(latents[:, :, : model.latent_chunk])  # warm-up: allocator, one chunk
        base = peak_rss_mib()
        start = time.perf_counter()
        checksum = 0.0
        if mode == "stream":
            dec = StreamingDecoder(model)
            for i in range(0, latents.shape[2], model.latent_chunk):
                for out in dec.push(latents[:, :, i : i + model.latent_chunk]):
                    checksum += float(out.float().mean())
            for out in dec.flush():
                checksum += float(out.float().mean())
        else:
            checksum = float(model.decode(latents).float().mean())
        seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    return {"peak_mib": peak, "extra_mib": peak - base, "fps": frames / seconds, "sum": checksum}


def child_full(preset: str, frames: int, size: int) -> dict:
    """One encode + decode of a ``frames``x``size``x``size`` clip; seconds per pass."""
    model = _random_model(preset)
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    with torch.inference_mode():
        start = time.perf_counter()
        z = model.encode(x)
        mid = time.perf_counter()
        model.decode(z)
        end = time.perf_counter()
    return {
        "encode_s": mid - start,
        "decode_s": end - mid,
        "peak_mib": peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }


def _spawn(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dc-ae-v-small")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, nargs="+", default=[80, 160, 320, 640])
    parser.add_argument("--full-frames", type=int, nargs="+", default=[80, 160])
    parser.add_argument("--skip-full", action="store_true", help="skip the f32t4c32 full-pass timing")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        kind, preset, frames, size, *mode = ns.child
        fn = child_full if kind == "full" else child_decode
        print(json.dumps(fn(preset, int(frames), int(size), *mode)))
        return
    print(f"decode, {ns.preset}, {ns.size}x{ns.size}, 1 thread; memory = peak RSS over post-warm-up RSS")
    print(f"{'mode':>7} {'frames':>7} {'extra MiB':>10} {'peak MiB':>9} {'frames/s':>9}")
    stream = {}
    for mode, lengths in (("stream", ns.frames), ("full", ns.full_frames)):
        for frames in lengths:
            r = _spawn("decode", ns.preset, str(frames), str(ns.size), mode)
            stream[(mode, frames)] = r
            print(f"{mode:>7} {frames:>7} {r['extra_mib']:>10.1f} {r['peak_mib']:>9.1f} {r['fps']:>9.1f}")
    lo, hi = stream[("stream", min(ns.frames))], stream[("stream", max(ns.frames))]
    ratio = hi["peak_mib"] / lo["peak_mib"]
    print(f"streaming peak RSS {max(ns.frames)} vs {min(ns.frames)} frames: {ratio:.3f}x (target <= 1.1x)")
    if not ns.skip_full:
        r = _spawn("full", "dc-ae-v-f32t4c32", "40", "64")
        print(f"\ndc-ae-v-f32t4c32 full pass, 40x64x64, fp32, {r['threads']} threads, random weights")
        enc, dec = r["encode_s"], r["decode_s"]
        print(f"encode {enc:.1f} s ({40 / enc:.2f} frames/s), decode {dec:.1f} s ({40 / dec:.2f} frames/s)")
        print(f"peak RSS {r['peak_mib'] / 1024:.1f} GiB (weights alone: 8.0 GiB)")


if __name__ == "__main__":
    main()
