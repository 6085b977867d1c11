"""Latent pre-computation: video shards -> DC-AE-V latents + text embeddings as latent shards.

    python -m megavg.infer.precompute --vae FOLDER --shards VIDEO_SHARDS --text-encoder ID|FOLDER \
        --frames 80 --size 704 1280 --out LATENT_DIR

Runs on one device per process. Under a launcher (``RANK``/``WORLD_SIZE`` set, or ``--part/--parts``)
each process takes every N-th shard and writes ``OUT/part-RRRRR/`` (an atomic folder of latent shards
with its index), so a crashed part is simply rerun. Each sample takes its first ``--frames`` frames
(every ``--frame-stride``), resized and centre-cropped to the bucket nearest its aspect ratio.
Latents are stored unscaled (the training task applies the model's scaling factor).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import torch

import megavg.models
from megavg.data.latents import write_latent_shards
from megavg.data.loader import video_sample_parts
from megavg.data.shards import list_shards, sample_counts, split_shards
from megavg.data.stream import SAMPLE_ERRORS, StreamStats, read_shard, shard_error_handler
from megavg.data.video import decode_frames, nearest_bucket, resize_crop
from megavg.infer.text import TextEncoder
from megavg.utils.errors import UserError, run_cli
from megavg.utils.logging import get_logger

log = get_logger("megavg.infer.precompute")


def video_samples(
    urls: list[str], frames: int, stride: int, buckets: list[tuple[int, int]]
) -> Iterator[dict]:
    """One pass over video shards: {"video": 3,T,H,W in [-1,1], "caption", "key"}; corrupt ones skipped."""
    stats = StreamStats()
    handler = shard_error_handler(stats)
    for url, size in zip(urls, sample_counts(urls)):
        for _, raw in read_shard(url, size, handler):
            try:
                if "__error__" in raw:
                    raise UserError(raw["__error__"])
                meta, data = video_sample_parts(raw)
                native = (meta["height"], meta["width"])  # displayed size; resized below, with antialiasing
                clip = decode_frames(data, 0, frames, stride, native, raw["__key__"], meta["rotation"])
            except SAMPLE_ERRORS as err:  # a broken sample is skipped; a bug in megavg is not
                stats.skipped += 1
                stats.warn_once(
                    raw.get("__key__", "?"), f"skipping sample {raw.get('__key__')} of {url}: {err}"
                )
                continue
            bucket = nearest_bucket(clip.shape[1], clip.shape[2], buckets)
            yield {
                "video": resize_crop(clip, bucket),
                "caption": meta["caption"],
                "key": raw["__key__"],
            }


@torch.no_grad()
def latent_samples(vae, text: TextEncoder, videos: Iterator[dict], device: str) -> Iterator[dict]:
    """Encode each clip (and its caption) into a latent training sample."""
    param = next(vae.parameters())
    for sample in videos:
        video = sample["video"].unsqueeze(0).to(device, param.dtype)  # 1, 3, T, H, W
        latents = vae.encode(video)[0].float().cpu()  # C, T', H', W'
        embedding = text([sample["caption"]])[0]  # L, D
        yield {"latents": latents, "text": embedding, "caption": sample["caption"], "key": sample["key"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m megavg.infer.precompute", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--vae", required=True, help="megavg DC-AE-V model folder")
    parser.add_argument("--shards", required=True, help="video shards: folder, brace pattern or glob")
    parser.add_argument("--text-encoder", required=True, help="hub id (e.g. google/umt5-xxl) or folder")
    parser.add_argument("--out", required=True, help="output folder (one part-RRRRR/ per process)")
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--frame-stride", type=int, default=1)
    parser.add_argument("--size", type=int, nargs=2, action="append", metavar=("H", "W"), required=True)
    parser.add_argument("--samples-per-shard", type=int, default=100)
    parser.add_argument("--part", type=int, default=int(os.environ.get("RANK", 0)))
    parser.add_argument("--parts", type=int, default=int(os.environ.get("WORLD_SIZE", 1)))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if not 0 <= args.part < args.parts:
        raise UserError(f"--part {args.part} is not in [0, --parts {args.parts})")
    urls = split_shards(list_shards(args.shards, "video"), args.part, args.parts, "processes")
    vae = megavg.models.load(args.vae, device=args.device).eval()
    if not hasattr(vae, "encode"):
        raise UserError(f"{args.vae}: not a DC-AE-V model folder")
    text = TextEncoder(args.text_encoder, device=args.device)
    buckets = [tuple(size) for size in args.size]
    videos = video_samples(urls, args.frames, args.frame_stride, buckets)
    out = Path(args.out) / f"part-{args.part:05d}"
    samples = latent_samples(vae, text, videos, args.device)
    shards = write_latent_shards(samples, out, args.samples_per_shard, overwrite=args.overwrite)
    log.info(
        "wrote %d latent samples in %d shard(s) to %s", sum(s["samples"] for s in shards), len(shards), out
    )
    return out


if __name__ == "__main__":
    run_cli(main)
