"""Checkpoint integrity: a manifest of every file of a tag, and the checks that read it.

``step_N/manifest.json`` lists each file of the tag (relative path, size in bytes, SHA-256). It is
written by rank 0 after every rank has written its files (and before ``latest`` moves), from the files
every rank reports (never from rank 0's directory listing alone, see :func:`seal`), so a tag with a
manifest was complete when it was sealed, and any later damage (a truncated copy, flipped bytes, a lost
file) shows as a size or hash mismatch that names the file.

Why size + SHA-256: the size catches truncation without reading anything; a hash is the only thing that
catches garbled bytes of the right length. SHA-256 is in the standard library, releases the GIL (files
are hashed on a thread pool) and the files are split over the ranks, so each rank hashes about 1/W of the
checkpoint at save and again at resume (which also warms the page cache for the load that follows).

Tags written before manifests existed are *legacy*: they are checked for structure only (the DeepSpeed
model and optimizer state files of every rank are present and non-empty, and so is ``config.yaml``); a
file damaged inside such a tag is found only when it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from megavg.utils.errors import UserError
from megavg.utils.io import atomic_file

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 16 << 20
_RANK_FILE_RE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_(model|optim)_states\.pt$")


def tag_files(tag_dir: Path) -> list[str]:
    """Every file under ``tag_dir`` (relative POSIX paths, sorted), without the manifest and without
    hidden files (temporaries of an atomic write)."""
    found = []
    for path in sorted(tag_dir.rglob("*")):
        rel = path.relative_to(tag_dir)
        if path.is_file() and rel.as_posix() != MANIFEST and not any(p.startswith(".") for p in rel.parts):
            found.append(rel.as_posix())
    return found


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe(tag_dir: Path, names: list[str]) -> dict[str, dict]:
    """``{name: {"size": bytes, "sha256": hex}}`` for the files ``names`` of ``tag_dir`` (thread pool)."""
    workers = max(1, min(8, os.cpu_count() or 1, len(names)))
    with ThreadPoolExecutor(workers) as pool:
        hashes = list(pool.map(lambda n: sha256_file(tag_dir / n), names))
    return {n: {"size": (tag_dir / n).stat().st_size, "sha256": h} for n, h in zip(names, hashes)}


def share(names: list[str], rank: int, world: int) -> list[str]:
    """The files rank ``rank`` of ``world`` hashes (round robin over the sorted list)."""
    return names[rank::world]


def write_manifest(tag_dir: Path, files: dict[str, dict], world_size: int) -> None:
    """Seal ``tag_dir``: write its manifest atomically (rank 0, after every rank wrote its files)."""
    body = {
        "format": FORMAT,
        "tag": tag_dir.name,
        "world_size": world_size,
        "files": dict(sorted(files.items())),
    }
    with atomic_file(tag_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(body, indent=1) + "\n")


def read_manifest(tag_dir: Path) -> dict | None:
    """The manifest of ``tag_dir``; None for a legacy tag (none written); UserError when unreadable."""
    path = tag_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
        files = body["files"]
        if body.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {body.get('format')!r}")
        for name, rec in files.items():
            if not isinstance(rec.get("size"), int) or not isinstance(rec.get("sha256"), str):
                raise ValueError(f"bad entry for {name}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path}: unreadable checkpoint manifest ({err})") from None
    return body


def problems(tag_dir: Path, rank: int = 0, world: int = 1) -> list[str]:
    """What is wrong with ``tag_dir`` as seen by ``rank`` of ``world`` (``path: problem`` strings; empty
    when intact). Every rank checks all sizes (cheap) and hashes its share of the files; a legacy tag is
    checked for structure (by rank 0 only)."""
    if not tag_dir.is_dir():
        return [f"{tag_dir}: missing"]
    try:
        manifest = read_manifest(tag_dir)
    except UserError as err:
        return [str(err)]
    if manifest is None:
        return legacy_problems(tag_dir) if rank == 0 else []
    found = []
    files = manifest["files"]
    for name, rec in files.items():
        path = tag_dir / name
        if not path.is_file():
            found.append(f"{path}: missing (listed in {MANIFEST})")
        elif path.stat().st_size != rec["size"]:
            found.append(
                f"{path}: {path.stat().st_size} bytes, {MANIFEST} says {rec['size']} (truncated or replaced)"
            )
    if found:
        return found
    mine = share(sorted(files), rank, world)
    try:
        actual = describe(tag_dir, mine)
    except OSError as err:  # every rank must come back from this call (a collective follows)
        return [f"{err.filename or tag_dir}: unreadable ({err.strerror or err})"]
    return [
        f"{tag_dir / n}: contents changed since it was written (SHA-256 differs from {MANIFEST})"
        for n in mine
        if actual[n]["sha256"] != files[n]["sha256"]
    ]


def legacy_problems(tag_dir: Path) -> list[str]:
    """Structure of a tag without a manifest: config, and model + optimizer states of ranks 0..N-1."""
    found = []
    ranks: dict[str, set[int]] = {"model": set(), "optim": set()}
    for path in tag_dir.iterdir():
        if m := _RANK_FILE_RE.search(path.name):
            ranks[m.group(2)].add(int(m.group(1)))
            if path.stat().st_size == 0:
                found.append(f"{path}: empty")
    world = max(ranks["model"] | ranks["optim"], default=-1) + 1
    if world == 0:
        found.append(f"{tag_dir}: no DeepSpeed *_model_states.pt / *_optim_states.pt files")
    for kind, have in ranks.items():
        for r in sorted(set(range(world)) - have):
            found.append(f"{tag_dir}/*zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt: missing")
    if not (tag_dir / "config.yaml").is_file():
        found.append(f"{tag_dir / 'config.yaml'}: missing")
    return found


def verify(tag_dir: Path) -> None:
    """Single-process check of a whole tag (``tools/consolidate.py``): UserError naming the first bad file."""
    found = problems(tag_dir)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UserError(f"{found[0]}{more}")


# -- collectives (every rank calls them) ----------------------------------------------------------------
def hash_plan(listings: list[list[str]]) -> list[list[str]]:
    """Which files each rank hashes, given the files each rank reported: every reported file once, by a
    rank that reported it (it sees the file), spread over those ranks (fewest assigned first)."""
    plan: list[list[str]] = [[] for _ in listings]
    reporters: dict[str, list[int]] = {}
    for rank, names in enumerate(listings):
        for name in names:
            reporters.setdefault(name, []).append(rank)
    for name in sorted(reporters):
        rank = min(reporters[name], key=lambda r: (len(plan[r]), r))
        plan[rank].append(name)
    return plan


def seal(tag_dir: Path) -> None:
    """Write ``tag_dir``'s manifest (collective, after a barrier that follows every rank's writes).

    The manifest is built from what the ranks report, not from one rank's directory listing: on NFS a
    listing made by rank 0 right after other nodes wrote can be stale and omit their files, while a
    writer always sees its own files (close-to-open consistency). Each rank lists the tag as it sees it
    after its own writes, the lists are gathered, every file is hashed by a rank that reported it, and
    rank 0 writes the union. A file no rank sees is in no manifest and makes the tag fail its check.
    """
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    listings: list[list[str] | None] = [None] * world
    dist.all_gather_object(listings, tag_files(tag_dir))
    parts: list[dict | None] = [None] * world
    dist.all_gather_object(parts, describe(tag_dir, hash_plan(listings)[rank]))
    if rank == 0:
        write_manifest(tag_dir, {k: v for part in parts for k, v in part.items()}, world)


def agreed_problems(tag_dir: Path) -> list[str]:
    """:func:`problems` of ``tag_dir`` gathered from every rank (collective): the same list on all ranks."""
    import torch.distributed as dist

    parts: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, problems(tag_dir, dist.get_rank(), dist.get_world_size()))
    return [p for part in parts for p in part]
