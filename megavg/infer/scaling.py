"""Measure a DC-AE-V's latent scale on video shards; print it, or write ``scaling_factor`` into its folder.

    python -m megavg.infer.scaling MODEL_DIR --shards 'data/{000..003}.tar' --frames 16 --size 64 64 [--write]

Diffusion wants latents of about unit variance: latents = ``scaling_factor`` x the DC-AE-V's latents
(:func:`megavg.infer.precompute.latent_samples`, the export manifest, ``generate`` divides by it). This
command encodes clips of the shards exactly as ``precompute`` cuts them (first ``--frames`` frames, every
``--frame-stride``, resized and centre-cropped to the nearest ``--size`` bucket) and measures the
**standard deviation over all latent elements** of the unscaled latents (all clips, channels and
positions pooled, around their pooled mean; as Stable Diffusion and diffusers took ``1 / latents.std()``).
The factor is ``1 / std``; the pooled mean is reported too (the factor does not remove it). ``--write``
replaces ``scaling_factor`` in ``MODEL_DIR/config.json`` (atomically; the weights are untouched), so
every later step (precompute, export, generate, I2V conditioning, validation) uses it. Latent shards
made before it hold latents scaled by the old factor: precompute them again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch

import megavg.models
from megavg.data.shards import list_shards
from megavg.models.registry import CONFIG_NAME, read_config
from megavg.utils.device import resolve_device
from megavg.utils.errors import UserError, run_cli
from megavg.utils.io import atomic_file
from megavg.utils.logging import get_logger

log = get_logger("megavg.infer.scaling")


@dataclasses.dataclass
class Moments:
    """Running count, mean and sum of squared deviations (Chan et al.'s pairwise combination, float64)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n, mean = x.numel(), x.mean().item()
        m2 = ((x - mean) ** 2).sum().item()
        delta, total = mean - self.mean, self.count + n
        self.m2 += m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        """Population standard deviation of every element added."""
        return math.sqrt(self.m2 / self.count)


@torch.no_grad()
def latent_moments(vae, clips, device: str, limit: int | None) -> tuple[Moments, int]:
    """Moments of the unscaled latents of ``clips`` (precompute's samples), at most ``limit`` clips."""
    param = next(vae.parameters())
    moments, used = Moments(), 0
    for sample in clips:
        z = vae.encode(sample["video"].unsqueeze(0).to(device, param.dtype))  # 1, C, T', H', W'
        moments.add(z)
        used += 1
        if limit is not None and used == limit:
            break
    return moments, used


def write_scaling_factor(folder: str | Path, factor: float) -> Path:
    """Set ``args.scaling_factor`` in the model folder's config.json (atomically, nothing else changed)."""
    config = read_config(folder)
    if config.get("family") != "dcaev":
        raise UserError(f"{folder}: a {config.get('family')!r} model folder, not a DC-AE-V")
    config.setdefault("args", {})["scaling_factor"] = factor
    path = Path(folder) / CONFIG_NAME
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    head = __doc__.split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m megavg.infer.scaling", description=head)
    parser.add_argument("model", help="megavg DC-AE-V model folder")
    parser.add_argument("--shards", required=True, help="video shards: folder, brace pattern or glob")
    parser.add_argument("--frames", type=int, required=True, help="frames per clip, as for precompute")
    parser.add_argument("--frame-stride", type=int, default=1)
    parser.add_argument("--size", type=int, nargs=2, action="append", metavar=("H", "W"), required=True,
                        help="a bucket, as for precompute (repeat for several)")  # fmt: skip
    parser.add_argument("--clips", type=int, default=None, help="use at most this many clips (default: all)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (the default)")
    parser.add_argument(
        "--write",
        action="store_true",
        help="write scaling_factor = 1/std into MODEL/config.json (else print)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Measure (and with ``--write`` store) the scaling factor; prints and returns the numbers."""
    args = parse_args(argv)
    if args.frames < 1 or (args.clips is not None and args.clips < 1):
        raise UserError("--frames and --clips must be >= 1")
    family = read_config(args.model).get("family")
    if family != "dcaev":
        raise UserError(f"{args.model}: a {family!r} model folder, not a DC-AE-V")
    urls = list_shards(args.shards, "video")
    from megavg.infer.precompute import video_samples  # webdataset: the [train] extra, as precompute

    device = str(resolve_device(args.device))
    vae = megavg.models.load(args.model, device=device).eval()
    buckets = list(dict.fromkeys(tuple(size) for size in args.size))
    clips = video_samples(urls, args.frames, args.frame_stride, buckets)
    moments, used = latent_moments(vae, clips, device, args.clips)
    if used == 0 or moments.std == 0:
        raise UserError(f"{args.shards}: no clip decoded (or all latents equal): nothing to measure")
    result = {"std": moments.std, "mean": moments.mean, "scaling_factor": 1.0 / moments.std, "clips": used,
              "elements": moments.count, "previous_scaling_factor": vae.args.scaling_factor}  # fmt: skip
    if args.write:
        result["written"] = str(write_scaling_factor(args.model, result["scaling_factor"]))
    print(json.dumps(result))
    where = f" written to {result['written']}" if args.write else ""
    log.info("latent std %.6g (mean %.4g) over %d clips: scaling_factor %.6g%s", moments.std, moments.mean,
             used, result["scaling_factor"], where)  # fmt: skip
    return result


if __name__ == "__main__":
    run_cli(main)
