"""Latent shards for precomputed training: per sample one safetensors blob + json metadata.

Sample ``<key>.safetensors`` holds ``latents`` [C, T, H, W], ``text`` [L, D] (text-encoder output, padding
removed) and optionally ``null_text`` [L0, D] (the encoding of the empty caption, the null condition that
text dropout substitutes), ``text_mask`` [L], ``teacher_latents`` [C', T', H', W'] (the base VAE's latents
of the same clip, for AE-Adapt-V embedding alignment), and for I2V ``condition`` [4 + C, T, H, W] (mask
channels, then the encoded first frame), ``image`` [N, D'] (CLIP image tokens) and ``teacher_condition`` [4
+ C', T', H', W'] (the base I2V model's condition, for alignment). Every tensor is stored as the DiT
consumes it (latents scaled or normalised). ``<key>.json`` holds the caption and the shapes. Batches stack
every tensor (equal shapes required) and pad text to 512 tokens with zeros, exactly as the sampler does
(:mod:`megavg.conditioning.text`). A shard set may hold several buckets (latent grids ``TxHxW``): each shard
holds one, index.json records them, and the loader forms every batch from one bucket
(:mod:`megavg.data.buckets`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from megavg.conditioning.text import pad_text
from megavg.data.shards import write_shards
from megavg.utils.errors import UserError

REQUIRED = ("latents", "text")
STACKED = ("image", "teacher_latents", "condition", "teacher_condition")  # optional, batched by stacking
OPTIONAL = ("text_mask", "null_text", *STACKED)


def encode_latent_sample(sample: dict, index: int) -> dict:
    """One training sample (tensors + optional ``caption``/``key``) -> webdataset files."""
    missing = [name for name in REQUIRED if name not in sample]
    if missing:
        raise UserError(f"latent sample {index}: missing tensor {missing[0]!r} (needs {', '.join(REQUIRED)})")
    tensors = {k: sample[k].detach().cpu().contiguous() for k in REQUIRED + OPTIONAL if k in sample}
    if tensors["latents"].ndim != 4 or tensors["text"].ndim != 2:
        raise UserError(f"latent sample {index}: latents must be [C, T, H, W] and text [L, D]")
    blob = save_tensors(tensors)
    key = sample.get("key") or hashlib.sha1(blob).hexdigest()[:16]
    meta = {"caption": sample.get("caption", ""), "shapes": {k: list(v.shape) for k, v in tensors.items()}}
    return {"__key__": key, "safetensors": blob, "json": json.dumps(meta).encode()}


def write_latent_shards(
    samples: Iterable[dict], out_dir: str | os.PathLike, samples_per_shard: int = 100, overwrite: bool = False
) -> list[dict]:
    """Write latent training samples as webdataset shards (atomic folder + index.json), one bucket (latent
    grid, :func:`latent_bucket`) per shard, the samples of each bucket counted in the index."""
    encoded: Iterator[dict] = (encode_latent_sample(s, i) for i, s in enumerate(samples))
    return write_shards(encoded, out_dir, "latent", samples_per_shard, overwrite, bucket_of=_bucket_of)


def latent_bucket(shape: Iterable[int]) -> str:
    """Bucket name of latents [C, T, H, W]: ``"TxHxW"``."""
    return "x".join(str(n) for n in list(shape)[1:])


def _bucket_of(encoded: dict) -> str:
    return latent_bucket(json.loads(encoded["json"])["shapes"]["latents"])


def _padded(items: list[dict], name: str) -> torch.Tensor:
    """[B, 512, D] from each item's unpadded [L, D] ``name`` (rows its optional ``text_mask`` marks False
    zeroed, as in shards written with one)."""
    rows = []
    for item in items:
        states = item[name]
        if name == "text" and "text_mask" in item:
            states = states * item["text_mask"].bool()[:, None]
        rows.append(states)
    return pad_text(rows)


def decode_latent_sample(raw: dict) -> dict:
    """webdataset sample -> {"latents", "text", ..., "caption"}; raises on missing or broken parts."""
    tensors = load_tensors(raw["safetensors"])
    for name in REQUIRED:
        if name not in tensors:
            raise UserError(f"no {name!r} tensor")
    meta = json.loads(raw["json"]) if "json" in raw else {}
    return {**tensors, "caption": str(meta.get("caption", ""))}


def collate_latents(items: list[dict]) -> dict:
    """Stack latents [B, C, T, H, W]; text [B, 512, D] padded exactly as the sampler pads it
    (:func:`megavg.conditioning.text.pad_text`), and ``null_text`` likewise when every sample carries it."""
    shapes = {tuple(item["latents"].shape) for item in items}
    if len(shapes) > 1:
        raise UserError(
            f"latent shapes differ inside one batch {sorted(shapes)}: shards without recorded buckets "
            "must hold one shape (rewrite them with megavg.data.latents.write_latent_shards)"
        )
    batch = {"latents": torch.stack([item["latents"] for item in items]), "text": _padded(items, "text")}
    if all("null_text" in item for item in items):
        batch["null_text"] = _padded(items, "null_text")
    for name in STACKED:
        if all(name in item for item in items):
            batch[name] = torch.stack([item[name] for item in items])
    batch["caption"] = [item["caption"] for item in items]
    return batch
