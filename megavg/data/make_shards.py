"""``tools/make_shards.py``: video files (folders, lists, CSVs with captions) -> webdataset shards.

    python tools/make_shards.py INPUTS... --out DIR [--captions CSV|JSONL] [--samples-per-shard N]

INPUTS are video files, folders (searched recursively), ``.txt`` lists (one path a line), ``.csv``
files (``path,caption`` rows, optional header) or ``.jsonl`` files (one ``{"path": ..., "caption": ...}``
object a line); relative paths in lists are relative to the list. A video's caption is the one its list
row gives, else the one ``--captions`` (CSV or JSONL) gives for its path or file name, else the text of
a ``.txt`` sidecar next to it with the same stem (``clip.mp4`` -> ``clip.txt``), else empty. Every
video is fully decoded with PyAV first, by the rules of ``megavg.data.video``. A missing, empty,
undecodable, cut short (fewer frames or an earlier end than its container declares) or too short input
stops the run with one ``error:`` line and exit 2 and writes nothing; ``--skip-bad`` warns about it and
goes on. A folder holding no video file is an error too. Each sample stores the original bytes
(``<key>.<ext>``) and ``<key>.json`` (caption, frames, fps, width, height, rotation, source), keyed by a
hash of the bytes (stable across machines; duplicates are dropped). Width and height are the displayed
size (rotation metadata applied), which is what the loader's buckets use.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from megavg.data.shards import write_shards
from megavg.data.video import VIDEO_EXTS, check_video_file
from megavg.utils.errors import UserError
from megavg.utils.logging import get_logger, plural

log = get_logger(__name__)


def read_caption_csv(path: Path) -> list[tuple[Path, str]]:
    """``path,caption`` rows (header row optional) -> [(video path, caption)]."""
    if not path.is_file():
        raise UserError(f"{path}: no such caption file")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.reader(fh) if row and row[0].strip()]
    if rows and rows[0][0].strip().lower() in ("path", "file", "video"):
        rows = rows[1:]
    return [(path.parent / row[0].strip(), row[1] if len(row) > 1 else "") for row in rows]


def read_caption_jsonl(path: Path) -> list[tuple[Path, str]]:
    """One ``{"path", "caption"}`` object a line (blank lines skipped) -> [(video path, caption)]."""
    if not path.is_file():
        raise UserError(f"{path}: no such caption file")
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            video, caption = row["path"], row.get("caption", "")
            if not isinstance(video, str) or not isinstance(caption, str):
                raise TypeError("path and caption must be strings")
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f'{path}:{number}: not a {{"path", "caption"}} object ({err!r})') from None
        found.append((path.parent / video.strip(), caption))
    return found


def read_captions(path: Path) -> list[tuple[Path, str]]:
    """A caption list: ``.jsonl`` (path/caption objects) or CSV (``path,caption`` rows)."""
    return read_caption_jsonl(path) if path.suffix.lower() == ".jsonl" else read_caption_csv(path)


def sidecar_caption(video: Path) -> str:
    """The text of ``video``'s ``.txt`` sidecar (same stem, same folder), stripped; empty when none."""
    sidecar = video.with_suffix(".txt")
    return sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""


def discover_inputs(inputs: list[str]) -> list[tuple[Path, str]]:
    """Expand INPUTS into [(video path, caption)], in the given order (folders sorted)."""
    found: list[tuple[Path, str]] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            videos = [p for p in sorted(path.rglob("*")) if p.suffix.lower().lstrip(".") in VIDEO_EXTS]
            videos = [p for p in videos if p.is_file()]  # not a folder named like a video
            if not videos:
                raise UserError(f"{path}: folder holds no video file ({', '.join(VIDEO_EXTS)})")
            found += [(p, "") for p in videos]
        elif path.suffix.lower() in (".csv", ".jsonl"):
            found += read_captions(path)
        elif path.suffix.lower() == ".txt" and path.is_file():
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            found += [(path.parent / ln, "") for ln in lines if ln and not ln.startswith("#")]
        else:
            found.append((path, ""))
    if not found:
        raise UserError(f"no video found in {', '.join(inputs)}")
    return found


def video_samples(
    items: list[tuple[Path, str]], captions: dict[str, str], min_frames: int, skip_bad: bool
) -> Iterator[dict]:
    """Validate each video and yield its webdataset sample; bad ones raise (or are skipped and warned)."""
    seen: dict[str, Path] = {}
    for path, caption in items:
        try:
            info = check_video_file(path, min_frames)
        except UserError as err:
            if not skip_bad:
                raise
            log.warning("skipping %s", err)
            continue
        data = path.read_bytes()
        key = hashlib.sha1(data).hexdigest()[:16]
        if key in seen:
            log.warning("skipping %s: same bytes as %s", path, seen[key])
            continue
        seen[key] = path
        caption = caption or captions.get(str(path.resolve()), captions.get(path.name, ""))
        caption = caption or sidecar_caption(path)
        meta = {"caption": caption, "source": path.name, **vars(info)}
        yield {"__key__": key, path.suffix.lower().lstrip("."): data, "json": json.dumps(meta).encode()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "inputs", nargs="+", help="video files, folders, .txt lists, .csv (path,caption) or .jsonl lists"
    )
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument(
        "--captions",
        help="CSV (path,caption) or JSONL ({path, caption}) for inputs given as files or folders",
    )
    parser.add_argument("--samples-per-shard", type=int, default=100)
    parser.add_argument("--min-frames", type=int, default=8, help="shorter videos are bad input")
    parser.add_argument("--skip-bad", action="store_true", help="warn about bad videos instead of failing")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (wrap with ``run_cli``)."""
    args = parse_args(argv)
    captions = {}
    if args.captions:
        for path, caption in read_captions(Path(args.captions)):
            captions[str(path.resolve())] = captions[path.name] = caption
    items = discover_inputs(args.inputs)
    samples = video_samples(items, captions, args.min_frames, args.skip_bad)
    shards = write_shards(samples, args.out, "video", args.samples_per_shard, args.overwrite)
    total = sum(s["samples"] for s in shards)
    print(f"wrote {plural(total, 'video')} in {plural(len(shards), 'shard')} to {os.fspath(args.out)}")
