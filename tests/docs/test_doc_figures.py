"""Figures the docs quote from a tool are the tool's: each is marked in the page with a comment

    <!-- figures: python -m megavg.plan ARGS --json :: per_gpu_gib.total=37.27
      layouts[sp=8,checkpointing=true].per_gpu_gib.total=10.11 -->

naming the command (JSON output) and, per figure, where it sits in that output and the value as the page
writes it. The test runs the command, rounds the tool's value to the digits written and compares; each
value must also appear in the page's section around the comment (so prose and mark cannot drift apart).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MARK = re.compile(r"<!-- figures:\s+(?P<cmd>.*?)\s+::\s+(?P<figures>.*?)\s*-->", re.S)
STEP = re.compile(r"(?P<key>\w+)(\[(?P<pick>[^\]]*)\])?")


def marks() -> list[tuple[str, str, str, dict[str, str]]]:
    """(page, section text, command, {path: value}) of every figures comment in README.md and docs/."""
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text()
        for m in MARK.finditer(text):
            start = text.rfind("\n#", 0, m.start())
            end = text.find("\n#", m.end())
            section = text[start : end if end >= 0 else len(text)].replace(m.group(0), "")
            figures = dict(f.rsplit("=", 1) for f in m.group("figures").split())
            found.append((page.name, section, " ".join(m.group("cmd").split()), figures))
    return found


def lookup(tree, path: str):
    """``a.b[k=v,k2=v2].c`` (the first list item matching every k=v) or ``a[3]`` in a JSON tree."""
    for step in re.findall(r"\w+(?:\[[^\]]*\])?", path):
        m = STEP.fullmatch(step)
        tree = tree[m["key"]]
        pick = m["pick"]
        if pick is None:
            continue
        if pick.isdigit():
            tree = tree[int(pick)]
            continue
        want = dict(p.split("=", 1) for p in pick.split(","))
        tree = next(item for item in tree if all(json.dumps(item[k]) == v for k, v in want.items()))
    return tree


def test_lookup_paths():
    tree = {"a": {"b": 1.234}, "rows": [{"sp": 4, "ok": False, "x": 1}, {"sp": 8, "ok": True, "x": 2}]}
    assert lookup(tree, "a.b") == 1.234
    assert lookup(tree, "rows[sp=8,ok=true].x") == 2 and lookup(tree, "rows[0].x") == 1


def test_pages_mark_their_tool_figures():
    assert any(page == "planning.md" for page, *_ in marks())


@pytest.mark.slow
@pytest.mark.parametrize(
    "page, section, cmd, figures", marks(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_quoted_figures_are_what_the_tool_prints(page, section, cmd, figures):
    argv = shlex.split(cmd)
    assert argv[:2] == ["python", "-m"] and "--json" in argv, (
        f"{page}: {cmd}: a python -m command with --json"
    )
    proc = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    output = json.loads(proc.stdout)
    for path, quoted in figures.items():
        assert re.search(rf"(?<![\d.]){re.escape(quoted)}(?![\d])", section), (
            f"{page}: {quoted} not in the text"
        )
        digits = len(quoted.partition(".")[2])
        actual = round(float(lookup(output, path)), digits)
        assert actual == float(quoted), f"{page}: {path} is {actual} in `{cmd}`, the page says {quoted}"
