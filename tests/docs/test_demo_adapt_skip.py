"""tools/demo_adapt.sh's resume rules, without running a stage: ``PY`` is a stand-in that logs each call,
runs one-line ``-c`` snippets with the real Python, answers ``megavg.train --check`` with exit 3
("finished") and every other module or tool with success. The full chain runs in test_demo_adapt.py."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.docs.doc_commands import REPO

D = "runs/adapt_demo"
PHASES = ("align", "head", "lora")


def finished_layout(root) -> None:
    """The outputs of a finished 2-step adapt demo (empty stand-ins: nothing reads them here)."""
    for name in ("tools", "configs"):
        (root / name).symlink_to(REPO / name)
    for folder in ("dcae", "tiny/wan", "student0", "latents/part-00000", "latents/part-00001", "pipeline"):
        (root / D / folder).mkdir(parents=True)
    for part in ("part-00000", "part-00001"):
        (root / D / "latents" / part / "index.json").touch()
    (root / D / "fox.mp4").touch()
    for run in ("runs/dcaev_demo", *(f"{D}/{p}" for p in PHASES)):
        (root / run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (root / run / "checkpoints/latest").write_text("step_00000002\n")
    for phase in PHASES:
        (root / D / f"{phase}-model").mkdir()


def run_demo(root) -> list[str]:
    calls = root / "calls.txt"
    calls.write_text("")
    py = root / "python"
    py.write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = -c ] && exec {sys.executable} "$@"\n'
        'case "$*" in *"megavg.train --check"*) exit 3;; esac\nexit 0\n'
    )
    py.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "PY": str(py), "ADAPT_DEMO_STEPS": "2"}
    proc = subprocess.run(["bash", "tools/demo_adapt.sh"], cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [c for c in calls.read_text().splitlines() if not c.startswith("-c ")]


def test_finished_demo_runs_nothing_again(tmp_path):
    finished_layout(tmp_path)
    assert run_demo(tmp_path) == []  # no --check start-up, no consolidate/export/generate


def test_a_phase_that_runs_again_redoes_every_later_stage(tmp_path):
    finished_layout(tmp_path)
    (tmp_path / D / "head/checkpoints/latest").write_text("step_00000001\n")  # head interrupted
    calls = run_demo(tmp_path)
    expected = ["-m megavg.train --check", "tools/consolidate.py"] * 2 + [
        "tools/export_pipeline.py", "-m megavg.infer.generate"
    ]  # fmt: skip
    assert len(calls) == len(expected) and all(map(str.startswith, calls, expected)), calls
    assert "run.dir=runs/adapt_demo/head" in calls[0] and "run.dir=runs/adapt_demo/lora" in calls[2]
    assert not os.path.exists(tmp_path / D / "lora")  # the later phase starts over
    assert (tmp_path / D / "align-model").is_dir()  # an earlier one stays
