"""webdataset shards: write them atomically, list them, split them by data-parallel rank, stream them.

A shard folder holds ``shard-000000.tar ...`` plus ``index.json`` (kind, samples per shard). Inside a tar,
the files of one sample share a key: ``<key>.mp4`` + ``<key>.json`` (video) or ``<key>.safetensors`` +
``<key>.json`` (latents).
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import braceexpand
import webdataset as wds

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
) -> list[dict]:
    """Write ``samples`` (dicts with ``__key__`` and ``ext: bytes`` entries) as tar shards + index.json.

    The folder appears complete or not at all (written under a temporary name, then renamed). An
    existing non-empty ``out_dir`` is an error unless ``overwrite``. Returns the index's shard list.
    """
    out_dir = Path(out_dir)
    if samples_per_shard < 1:
        raise UserError(f"samples per shard must be >= 1, got {samples_per_shard}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise UserError(f"{out_dir}: output exists and is not empty (pass --overwrite to replace it)")
    shards: list[dict] = []
    with atomic_dir(out_dir) as tmp:
        writer = None
        for sample in samples:
            if writer is None or shards[-1]["samples"] == samples_per_shard:
                if writer is not None:
                    writer.close()
                shards.append({"name": f"shard-{len(shards):06d}.tar", "samples": 0})
                writer = wds.TarWriter(str(tmp / shards[-1]["name"]), mtime=0.0)
            writer.write(sample)
            shards[-1]["samples"] += 1
        if writer is None:
            raise UserError(f"{out_dir}: no sample to write")
        writer.close()
        index = {"kind": kind, "samples": sum(s["samples"] for s in shards), "shards": shards}
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


def _check_index_kind(folder: Path, kind: str) -> None:
    index = folder / INDEX
    if not index.exists():
        return
    try:
        declared = json.loads(index.read_text())["kind"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{index}: unreadable shard index ({err!r})") from None
    if declared != kind:
        raise UserError(f"{folder}: holds {declared} shards but config data.kind is {kind}")


def split_shards(urls: list[str], part: int, parts: int, what: str) -> list[str]:
    """Every ``parts``-th shard starting at ``part``: disjoint, covering, and independent of the order
    ranks start in. Fewer shards than parts would leave a part empty: an error."""
    if len(urls) < parts:
        raise UserError(
            f"{len(urls)} shard(s) cannot feed {parts} {what}: write at least {parts} shards "
            "(smaller --samples-per-shard) or use fewer ranks/workers"
        )
    return urls[part::parts]


@dataclasses.dataclass
class StreamStats:
    """Counters of one sample stream (one process)."""

    skipped: int = 0
    shard_errors: int = 0
    samples_per_epoch: int | None = None
    warned: set = dataclasses.field(default_factory=set)

    def warn_once(self, what: str, message: str) -> None:
        """Log ``message`` the first time ``what`` is seen (a stream revisits shards every epoch)."""
        if what not in self.warned:
            self.warned.add(what)
            log.warning(message)


def shard_error_handler(stats: StreamStats) -> Callable[[Exception], bool]:
    """webdataset handler for unreadable tar data: count, warn once per shard, go on."""

    def handler(exn: Exception) -> bool:
        stats.shard_errors += 1
        # webdataset appends the url to the args, or (inside a tar) " @ <stream repr>" to the message
        message = str(exn.args[0]) if exn.args else repr(exn)
        reason, _, stream = message.partition(" @ ")
        named = re.search(r"name='([^']+)'", stream)
        shard = next((a for a in exn.args[1:] if isinstance(a, str)), named[1] if named else "?")
        stats.warn_once(f"shard:{shard}", f"skipping unreadable data in shard {shard}: {reason}")
        return True

    return handler


def resampled_samples(urls: list[str], seed: str, stats: StreamStats) -> Iterator[dict]:
    """Endless raw samples: epoch after epoch, ``urls`` in an order drawn from ``(seed, epoch)``.

    Raises UserError when a whole epoch yields no sample (every shard unreadable).
    """
    handler = shard_error_handler(stats)
    for epoch in itertools.count():
        order = list(urls)
        random.Random(f"{seed}/epoch{epoch}").shuffle(order)
        count = 0
        for sample in wds.tarfile_samples(({"url": u} for u in order), handler=handler):
            count += 1
            yield sample
        if count == 0:
            raise UserError(f"no readable sample in {len(urls)} shard(s): {', '.join(urls[:3])} ...")
        if stats.samples_per_epoch is None:
            stats.samples_per_epoch = count
