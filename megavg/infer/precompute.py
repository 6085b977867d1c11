"""Latent pre-computation: video shards -> DC-AE-V latents + text embeddings as latent shards.

    python -m megavg.infer.precompute --vae FOLDER --shards VIDEO_SHARDS --text-encoder ID|FOLDER \
        --frames 80 --size 704 1280 [--size 480 832 ...] --out LATENT_DIR \
        [--teacher-vae WAN_VAE] [--i2v --image-encoder CLIP]

Runs on one device per process. Under a launcher (``RANK``/``WORLD_SIZE`` set, or ``--part/--parts``)
each process takes every N-th shard. Each sample takes its first ``--frames`` frames (every
``--frame-stride``), resized and centre-cropped to the ``--size`` bucket nearest its aspect ratio.
Multi-resolution: each process writes **one bucketed shard set**, ``OUT/part-RRRRR/`` (an atomic folder
of latent shards; every shard holds one bucket and index.json records the buckets and their sample
counts), and the training loader forms every batch from one bucket (``data.shards='OUT/part-*/*.tar'``,
see :mod:`megavg.data.buckets`). A part folder that exists already is skipped (a crashed run is simply
rerun) unless ``--overwrite``.

Every tensor is stored as the DiT sees it: ``latents`` = DC-AE-V latents times its scaling factor;
``teacher_latents`` (``--teacher-vae``) = the Wan-2.1 VAE's normalised latents of the same clip at the
teacher's frame count (see :mod:`megavg.infer.teacher_vae`); with ``--i2v``: ``condition`` = mask + encoded
first frame (:func:`megavg.infer.conditioning.i2v_condition`), ``image`` = CLIP image tokens of the first
frame, and with a teacher also ``teacher_condition`` (the base I2V model's condition, for phase 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

import megavg.models
from megavg.conditioning.text import NULL_CAPTION
from megavg.data.latents import write_latent_shards
from megavg.data.loader import video_sample_parts
from megavg.data.shards import INDEX, list_shards, sample_counts, split_shards
from megavg.data.stream import SAMPLE_ERRORS, StreamStats, read_shard, shard_error_handler
from megavg.data.video import decode_frames, nearest_bucket, resize_crop
from megavg.infer.conditioning import ImageEncoder, i2v_condition
from megavg.infer.stages import load_image_encoder_from
from megavg.infer.teacher_vae import DcaevTeacher, TeacherVAE, load_teacher
from megavg.infer.text import TextEncoder
from megavg.utils.device import resolve_device
from megavg.utils.errors import UserError, run_cli
from megavg.utils.logging import get_logger, plural, progress

log = get_logger("megavg.infer.precompute")


def video_samples(
    urls: list[str], frames: int, stride: int, buckets: list[tuple[int, int]]
) -> Iterator[dict]:
    """One pass over video shards yielding each sample resized and centre-cropped to the nearest of
    ``buckets`` to its aspect ratio: {"video": 3,T,H,W in [-1,1], "caption", "key"}. Corrupt samples are
    skipped with a warning."""
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
            bucket = nearest_bucket(*native, buckets)
            yield {"video": resize_crop(clip, bucket), "caption": meta["caption"], "key": raw["__key__"]}


@dataclasses.dataclass
class Encoders:
    """What a clip is encoded with: DC-AE-V and the text encoder, optionally the teacher VAE and (I2V)
    the CLIP image encoder."""

    vae: nn.Module
    text: TextEncoder
    device: str
    teacher: TeacherVAE | DcaevTeacher | None = None
    image: ImageEncoder | None = None  # set for I2V


@torch.no_grad()
def latent_samples(enc: Encoders, videos: Iterator[dict]) -> Iterator[dict]:
    """Encode each clip (and its caption) into a latent training sample."""
    param = next(enc.vae.parameters())
    null_text = enc.text([NULL_CAPTION])[0]  # [L0, D]: the null condition, stored with every sample
    with progress(None, "precompute", "sample") as bar:
        for sample in videos:
            yield _latent_sample(enc, sample, param.dtype, null_text)
            bar.update()


@torch.no_grad()
def _latent_sample(enc: Encoders, sample: dict, dtype: torch.dtype, null_text: torch.Tensor) -> dict:
    """One clip (and its caption) -> its latent training sample."""
    video = sample["video"].unsqueeze(0)  # 1, 3, T, H, W
    latents = enc.vae.encode(video.to(enc.device, dtype))[0].float().cpu()  # C, T', H', W'
    out = {
        "latents": latents * enc.vae.args.scaling_factor,
        "text": enc.text([sample["caption"]])[0],  # L, D
        "null_text": null_text,
        "caption": sample["caption"],
        "key": sample["key"],
    }
    if enc.teacher is not None:
        out["teacher_latents"] = enc.teacher.latents(video)[0]  # 16, T'+1, 4H', 4W' (f32 vs f8)
    if enc.image is not None:
        out.update(i2v_tensors(enc, video))
    return out


def i2v_tensors(enc: Encoders, video: torch.Tensor) -> dict[str, torch.Tensor]:
    """I2V inputs from the clip's first frame: condition, CLIP tokens (and the teacher's condition)."""
    param = next(enc.vae.parameters())
    frames, image = video.shape[2], video[:, :, 0]  # 1, 3, H, W
    condition = i2v_condition(enc.vae, image.to(enc.device, param.dtype), frames)[0]  # 4 + C, T', H', W'
    out = {"condition": condition.float().cpu(), "image": enc.image(image.to(enc.device))[0].float().cpu()}
    if enc.teacher is not None:
        out["teacher_condition"] = enc.teacher.i2v_condition(image, frames + 1)[0]
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m megavg.infer.precompute", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--vae", required=True, help="megavg DC-AE-V model folder")
    parser.add_argument("--shards", required=True, help="video shards: folder, brace pattern or glob")
    parser.add_argument("--text-encoder", required=True, help="hub id (e.g. google/umt5-xxl) or folder")
    parser.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the text encoder's)")
    parser.add_argument("--out", required=True, help="output folder: part-RRRRR/ (one bucketed set each)")
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--frame-stride", type=int, default=1)
    parser.add_argument("--size", type=int, nargs=2, action="append", metavar=("H", "W"), required=True,
                        help="a bucket (repeat for several: one set holds them all)")  # fmt: skip
    parser.add_argument(
        "--teacher-vae",
        help="the base model's VAE (Wan-2.1 diffusers folder or a megavg "
        "DC-AE-V folder): also write teacher_latents",
    )
    parser.add_argument("--i2v", action="store_true", help="also write the I2V condition and CLIP tokens")
    parser.add_argument("--image-encoder", help="CLIP ViT-H/14 for --i2v: folder, hub id, Wan's .pth")
    parser.add_argument("--samples-per-shard", type=int, default=100)
    parser.add_argument("--part", type=int, default=int(os.environ.get("RANK", 0)))
    parser.add_argument("--parts", type=int, default=int(os.environ.get("WORLD_SIZE", 1)))
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda (the GPU of LOCAL_RANK / SLURM_LOCALID, honouring "
                        "CUDA_VISIBLE_DEVICES), cuda:N, or auto (the default)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations, before anything loads."""
    if not 0 <= args.part < args.parts:
        raise UserError(f"--part {args.part} is not in [0, --parts {args.parts})")
    if args.i2v != bool(args.image_encoder):
        raise UserError("--i2v and --image-encoder go together (the CLIP image tokens need the encoder)")
    if (args.teacher_vae or args.i2v) and args.frames % 4:
        raise UserError(f"--frames {args.frames}: must be a multiple of 4 with --teacher-vae or --i2v")


def load_encoders(args: argparse.Namespace) -> Encoders:
    args.device = str(resolve_device(args.device))  # one GPU per rank, not cuda:0 for all
    vae = megavg.models.load(args.vae, device=args.device).eval()
    if not hasattr(vae, "encode"):
        raise UserError(f"{args.vae}: not a DC-AE-V model folder")
    text = TextEncoder(args.text_encoder, device=args.device, tokenizer=args.tokenizer)
    enc = Encoders(vae, text, args.device)
    if args.teacher_vae:
        enc.teacher = load_teacher(args.teacher_vae, device=args.device)
    if args.i2v:
        enc.image = load_image_encoder_from(args.image_encoder).to(args.device)
    return enc


def main(argv: list[str] | None = None) -> list[Path]:
    """Write this part's bucketed shard set; returns the part folders written (none: it existed, or no
    sample of this part decoded)."""
    args = parse_args(argv)
    check_args(args)
    urls = split_shards(list_shards(args.shards, "video"), args.part, args.parts, "processes")
    out = Path(args.out) / f"part-{args.part:05d}"
    if (out / INDEX).is_file() and not args.overwrite:
        log.info("%s exists: skipped (--overwrite to redo it)", out)
        return []
    enc = load_encoders(args)
    buckets = list(dict.fromkeys(tuple(size) for size in args.size))
    videos = video_samples(urls, args.frames, args.frame_stride, buckets)
    first = next(videos, None)
    if first is None:
        log.info("no sample of part %d decodes: nothing written", args.part)
        return []
    samples = latent_samples(enc, itertools.chain([first], videos))
    shards = write_latent_shards(samples, out, args.samples_per_shard, overwrite=args.overwrite)
    counts = json.loads((out / INDEX).read_text())["buckets"]
    log.info("wrote %s in %s to %s (buckets: %s)", plural(sum(s["samples"] for s in shards), "latent sample"),
             plural(len(shards), "shard"), out, counts)  # fmt: skip
    return [out]


if __name__ == "__main__":
    run_cli(main)
