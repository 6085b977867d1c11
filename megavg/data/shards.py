"""webdataset shards: write them atomically, list them, split them by data-parallel rank, stream them.

A shard folder holds ``shard-000000.tar ...`` plus ``index.json`` (kind, samples per shard; for a
bucketed latent set also each shard's bucket and the samples per bucket). Inside a tar,
the files of one sample share a key: ``<key>.mp4`` + ``<key>.json`` (video) or ``<key>.safetensors`` +
``<key>.json`` (latents).
"""

from __future__ import annotations

import collections
import glob
import json
import os
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import braceexpand
import webdataset as wds
from webdataset.tariterators import base_plus_ext

from megavg.utils.errors import UserError
from megavg.utils.io import atomic_dir
from megavg.utils.logging import get_logger

log = get_logger(__name__)

INDEX = "index.json"


def write_shards(
    samples: Iterable[dict],
    out_dir: str | os.PathLike,
    kind: str,
    samples_per_shard: int = 100,
    overwrite: bool = False,
    bucket_of: Callable[[dict], str] | None = None,
) -> list[dict]:
    """Write ``samples`` (dicts with ``__key__`` and ``ext: bytes`` entries) as tar shards + index.json.

    With ``bucket_of`` (sample -> bucket name) every shard holds samples of one bucket only (one open
    shard per bucket, in the order samples arrive); the index records each shard's ``bucket`` and the
    samples per bucket (``buckets``). The folder appears complete or not at all (written under a
    temporary name, then renamed). An existing non-empty ``out_dir`` is an error unless ``overwrite``.
    Returns the index's shard list.
    """
    out_dir = Path(out_dir)
    if samples_per_shard < 1:
        raise UserError(f"samples per shard must be >= 1, got {samples_per_shard}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise UserError(f"{out_dir}: output exists and is not empty (pass --overwrite to replace it)")
    shards: list[dict] = []
    with atomic_dir(out_dir) as tmp:
        open_shards: dict[str | None, tuple[wds.TarWriter, dict]] = {}  # bucket -> (writer, index entry)
        for sample in samples:
            bucket = bucket_of(sample) if bucket_of else None
            writer, entry = open_shards.get(bucket, (None, {"samples": samples_per_shard}))
            if entry["samples"] == samples_per_shard:
                if writer is not None:
                    writer.close()
                entry = {"name": f"shard-{len(shards):06d}.tar", "samples": 0}
                entry.update({"bucket": bucket} if bucket_of else {})
                shards.append(entry)
                writer = wds.TarWriter(str(tmp / entry["name"]), mtime=0.0)
                open_shards[bucket] = writer, entry
            writer.write(sample)
            entry["samples"] += 1
        if not shards:
            raise UserError(f"{out_dir}: no sample to write")
        for writer, _ in open_shards.values():
            writer.close()
        index = {"kind": kind, "samples": sum(s["samples"] for s in shards), "shards": shards}
        if bucket_of:
            per_bucket: collections.Counter = collections.Counter()
            for entry in shards:
                per_bucket[entry["bucket"]] += entry["samples"]
            index["buckets"] = dict(per_bucket)  # samples per bucket, for the loader's bucket order
        (tmp / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return shards


def list_shards(spec: str, kind: str) -> list[str]:
    """Resolve ``data.shards`` (folder, brace pattern or glob) to a sorted list of shard paths.

    A folder's index.json, when present, must declare the same ``kind`` as the config.
    """
    if not spec:
        raise UserError("config data.shards: not set (a folder of .tar shards, a brace pattern or a glob)")
    if os.path.isdir(spec):
        _check_index_kind(Path(spec), kind)
        urls = sorted(str(p) for p in Path(spec).glob("*.tar"))
    elif "{" in spec:
        urls = list(braceexpand.braceexpand(spec))
        missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.exists(u)]
        if missing:
            raise UserError(f"config data.shards: {missing[0]} does not exist ({len(missing)} missing)")
    else:
        urls = sorted(glob.glob(spec))
    if not urls:
        raise UserError(f"config data.shards: no .tar shard found at {spec}")
    return urls


def _read_index(path: Path) -> dict:
    try:
        index = json.loads(path.read_text())
        shards = index["shards"]
        buckets = {s["name"]: s.get("bucket") for s in shards}
        return {
            "kind": index["kind"],
            "samples": {s["name"]: int(s["samples"]) for s in shards},
            "buckets": buckets,
        }
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: unreadable shard index ({err!r})") from None


def _check_index_kind(folder: Path, kind: str) -> None:
    if (folder / INDEX).exists() and _read_index(folder / INDEX)["kind"] != kind:
        declared = _read_index(folder / INDEX)["kind"]
        raise UserError(f"{folder}: holds {declared} shards but config data.kind is {kind}")


def _indexed(urls: list[str], field: str) -> dict[str, Any]:
    """``field`` (``samples`` or ``buckets``) of each url listed in its folder's index.json."""
    known: dict[str, Any] = {}
    for folder in {os.path.dirname(u) for u in urls if os.path.isfile(u)}:
        if os.path.isfile(os.path.join(folder, INDEX)):
            values = _read_index(Path(folder, INDEX))[field]
            known.update({os.path.join(folder, name): value for name, value in values.items()})
    return known


def sample_counts(urls: list[str]) -> list[int]:
    """Samples in each shard: from its folder's index.json when listed there, else by reading the tar."""
    known = _indexed(urls, "samples")
    return [known[u] if u in known else count_samples(u) for u in urls]


def shard_buckets(urls: list[str]) -> list[str | None]:
    """Each shard's bucket as its folder's index.json records it (``None``: not recorded, e.g. a set
    written before buckets, or a shard outside any indexed folder)."""
    known = _indexed(urls, "buckets")
    return [known.get(u) for u in urls]


def count_samples(url: str) -> int:
    """Samples in one shard (consecutive files sharing a key), reading tar headers only when local."""
    if not os.path.isfile(url):
        return sum(1 for _ in wds.tarfile_samples([{"url": url}], handler=wds.warn_and_continue))
    keys = []
    with open(url, "rb") as fh:
        try:
            for member in tarfile.open(fileobj=fh, mode="r:"):
                key = base_plus_ext(member.name)[0] if member.isreg() else None
                if key is not None and not key.startswith("__") and (not keys or keys[-1] != key):
                    keys.append(key)
        except (tarfile.TarError, OSError) as err:
            log.warning("shard %s is unreadable after %d samples: %s", url, len(keys), err)
    return len(keys)


def split_shards(urls: list[str], part: int, parts: int, what: str) -> list[str]:
    """Every ``parts``-th shard starting at ``part``: disjoint, covering, and independent of the order
    ranks start in. Fewer shards than parts would leave a part empty: an error."""
    if len(urls) < parts:
        raise UserError(
            f"{len(urls)} shard(s) cannot feed {parts} {what}: write at least {parts} shards "
            "(smaller --samples-per-shard) or use fewer ranks/workers"
        )
    return urls[part::parts]
