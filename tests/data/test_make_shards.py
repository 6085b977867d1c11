"""tools/make_shards.py: real clips in, webdataset shards out; bad input is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pytest

from megavg.data import real_clips
from megavg.data.make_shards import main
from megavg.utils.errors import run_cli
from tests.distributed.launch import REPO


def small_clips():
    return [p for p in real_clips() if p.name.startswith("carphone")]


def run(argv):
    """Run the CLI in-process; return its exit code (0 on success)."""
    try:
        run_cli(main, [str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code
    return 0


def members(tar_path):
    with tarfile.open(tar_path) as tar:
        return sorted(tar.getnames())


def test_folder_list_and_csv_inputs(tmp_path):
    a, b = small_clips()
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(a.read_bytes())
    listing = tmp_path / "list.txt"
    listing.write_text(f"# one path a line\n{b}\n")
    captions = tmp_path / "captions.csv"
    captions.write_text(f'path,caption\nvideos/a.mp4,"a car, a phone"\n{b},second\n')
    assert (
        run([folder, listing, "--captions", captions, "--out", tmp_path / "out", "--samples-per-shard", "1"])
        == 0
    )
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["kind"] == "video" and index["samples"] == 2 and len(index["shards"]) == 2
    metas = []
    for shard in index["shards"]:
        with tarfile.open(tmp_path / "out" / shard["name"]) as tar:
            names = sorted(tar.getnames())
            assert [n.split(".", 1)[1] for n in names] == ["json", "mp4"]
            metas.append(json.load(tar.extractfile(names[0])))
            video = tar.extractfile(names[1]).read()
            assert video in (a.read_bytes(), b.read_bytes())  # raw bytes stored unchanged
    assert sorted(m["caption"] for m in metas) == ["a car, a phone", "second"]
    assert {(m["frames"], m["width"], m["height"]) for m in metas} == {(120, 176, 144)}


def test_csv_input_and_duplicates(tmp_path):
    a, _ = small_clips()
    table = tmp_path / "set.csv"
    table.write_text(f"{a},first\n{a},same bytes again\n")
    assert run([table, "--out", tmp_path / "out"]) == 0
    assert len(members(tmp_path / "out" / "shard-000000.tar")) == 2  # one sample: duplicate dropped


@pytest.mark.parametrize(
    "name, content, reason",
    [("missing.mp4", None, "no such file"), ("empty.mp4", b"", "empty file"),
     ("text.mp4", b"hello\n" * 50, "not a decodable video")],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, name, content, reason):
    bad = tmp_path / name
    if content is not None:
        bad.write_bytes(content)
    out = tmp_path / "out"
    assert run([small_clips()[0], bad, "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and name in err[0] and reason in err[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # no partial output, no temp folder


def test_skip_bad_warns_and_writes_the_good_ones(tmp_path, warnings_log):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(small_clips()[0].read_bytes()[:2000])
    assert run([small_clips()[0], bad, "--out", tmp_path / "out", "--skip-bad"]) == 0
    assert len(warnings_log) == 1 and "broken.mp4" in warnings_log[0]
    assert json.loads((tmp_path / "out" / "index.json").read_text())["samples"] == 1


def test_existing_output_and_too_short(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert run([small_clips()[0], "--out", tmp_path / "out"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert run([small_clips()[0], "--out", tmp_path / "o2", "--min-frames", "500"]) == 2
    assert "only 120 frames, need at least 500" in capsys.readouterr().err


def test_the_script_itself_exits_2(tmp_path):
    script = REPO / "tools" / "make_shards.py"
    cmd = [sys.executable, str(script), str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope.mp4'}: no such file"


def captions_by_source(out):
    found = {}
    for shard in json.loads((out / "index.json").read_text())["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            for meta in (json.load(tar.extractfile(n)) for n in tar.getnames() if n.endswith(".json")):
                found[meta["source"]] = meta["caption"]
    return found


def test_jsonl_lists_and_txt_sidecars(tmp_path):
    a, b = small_clips()
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(a.read_bytes())
    (folder / "b.mp4").write_bytes(b.read_bytes())
    (folder / "a.txt").write_text("from the sidecar\n")
    (folder / "b.txt").write_text("a sidecar loses to --captions\n")
    listing = tmp_path / "captions.jsonl"
    listing.write_text('{"path": "videos/b.mp4", "caption": "from jsonl"}\n\n')
    assert run([folder, "--captions", listing, "--out", tmp_path / "out"]) == 0
    assert captions_by_source(tmp_path / "out") == {"a.mp4": "from the sidecar", "b.mp4": "from jsonl"}
    listing.write_text('{"path": "videos/a.mp4", "caption": "the list row wins"}\n')
    assert run([listing, "--out", tmp_path / "out2"]) == 0  # a JSONL list as input
    assert captions_by_source(tmp_path / "out2") == {"a.mp4": "the list row wins"}


def test_bad_jsonl_line_is_one_line_exit_2(tmp_path, capsys):
    listing = tmp_path / "captions.jsonl"
    listing.write_text('{"path": "a.mp4", "caption": "ok"}\n{"caption": "no path"}\n')
    assert run([listing, "--out", tmp_path / "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {listing}:2: not a")
    assert not (tmp_path / "out").exists()
