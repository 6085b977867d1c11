"""Every shell command of README.md and docs/*.md works as written.

Each ``python`` / ``python -m`` / ``bash tools/...`` / ``torchrun`` / ``deepspeed`` / ``sbatch`` /
``launchers/`` command: its script or module exists and its own argparse parser accepts the documented
arguments (every ``--flag`` spelled as ``--help`` lists it, positional arguments counted, choices and types);
training overrides are keys of the config tree. Cluster commands (sbatch, 14B models, ``/data`` paths) are
only checked. Cheap commands (the planner) run end to end. The slow tour test runs the README's
consolidate -> reconstruct -> export -> generate block as written in a fresh shell on a 2-step run of the
demo's config.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from megavg.data import real_clips
from megavg.train.config import load_config
from megavg.utils.errors import UserError
from tests.distributed.launch import free_port
from tests.docs.doc_commands import REPO, Check, Command, all_commands, checks_for, commands, shell_blocks
from tests.infer.tiny_pipeline import read_video

README_LIMIT = 150
COMMANDS = [c for c in all_commands() if checks_for(c)]
CHEAP = [c for c in COMMANDS if c.tokens[:3] == ("python", "-m", "megavg.plan")]

# A doc naming a missing flag, module, positional or config key: each must be caught.
BROKEN_DOC = """
```bash
python tools/consolidate.py runs/x --out y --no-such-flag
python -m megavg.no_such_module --out y
python -m no_such_tool --out y
python tools/consolidate.py --out y
python tools/consolidate.py runs/x --ou y
python -m megavg.eval fvd real/ generated/ --no-such-flag x
deepspeed --num_gpus 2 --no_such_launcher_flag --module megavg.train --config configs/train/dcaev_demo.yaml
torchrun --nproc_per_node 2 -m megavg.train --config configs/train/dcaev_demo.yaml optimizer.no_such_key=1
bash tools/no_such_script.sh
bash launchers/local.sh no_such_job configs/train/dcaev_demo.yaml
```
"""
BROKEN = commands(BROKEN_DOC, "broken.md")


def _parse_checks(cmds: list[Command]) -> list[Check]:
    return sorted({c for cmd in cmds for c in checks_for(cmd) if c.kind == "parse"}, key=repr)


@pytest.fixture(scope="module")
def parsed() -> dict[Check, dict]:
    """Every parse check of the docs and of BROKEN_DOC, run in one interpreter (tests/docs/parse_only.py)."""
    checks = _parse_checks(COMMANDS + BROKEN)
    proc = subprocess.run(
        [sys.executable, "tests/docs/parse_only.py"],
        input=json.dumps([[c.target, list(c.args)] for c in checks]),
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(zip(checks, json.loads(proc.stdout), strict=True))


def problems(command: Command, parsed: dict[Check, dict]) -> list[str]:
    """What is wrong with one documented command (empty: nothing)."""
    found = []
    for check in checks_for(command):
        if check.kind == "error":
            found.append(check.target)
        elif check.kind == "file" and not (REPO / check.target).is_file():
            found.append(f"{check.target}: no such file")
        elif check.kind == "module" and importlib.util.find_spec(check.target) is None:
            found.append(f"{check.target}: no such module")
        elif check.kind == "parse" and not parsed[check]["ok"]:
            found.append(f"{check.target}: {parsed[check]['message']}")
        elif check.kind == "config":
            try:
                load_config(REPO / check.target, list(check.args))
            except (UserError, OSError) as err:
                found.append(f"{check.target}: {err}")
    return found


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_parses(command, parsed):
    assert not problems(command, parsed), f"{command.where}: {command.text}"


@pytest.mark.parametrize("command", BROKEN, ids=[c.where for c in BROKEN])
def test_broken_command_is_caught(command, parsed):
    assert problems(command, parsed), f"not caught: {command.text}"


def test_docs_have_commands_and_readme_is_short():
    readme = (REPO / "README.md").read_text().splitlines()
    assert len(readme) <= README_LIMIT
    assert len(COMMANDS) >= 30  # the extraction found the docs' commands
    assert CHEAP


@pytest.mark.parametrize("command", CHEAP, ids=[c.where for c in CHEAP])
def test_cheap_command_runs(command):
    proc = subprocess.run(
        ["bash", "-c", f"source .venv/bin/activate && {command.text}"],  # as the docs say
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()


def _demo_run(root) -> None:
    """A 2-step run of the demo's own commands (tools/demo.sh without its install step) under root/runs."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    clips = [str(p) for p in real_clips()]
    shards = [sys.executable, REPO / "tools/make_shards.py", *clips, "--out", "runs/demo_shards"]
    subprocess.run([*shards, "--samples-per-shard", "1"], cwd=root, env=env, check=True, capture_output=True)
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "deepspeed"), "--num_gpus", "2", "--master_port",
         str(free_port()), "--module", "megavg.train", "--config", REPO / "configs/train/dcaev_demo.yaml",
         "data.shards=runs/demo_shards", "run.dir=runs/dcaev_demo", "schedule.steps=2", "checkpoint.every=2"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def _tour_block() -> str:
    blocks = [b for _, b in shell_blocks((REPO / "README.md").read_text()) if "megavg.infer.generate" in b]
    assert len(blocks) == 1, "README.md has one tour block"
    return blocks[0]


@pytest.mark.slow
def test_tour_in_a_fresh_shell(tmp_path):
    """The README's tour block, as written, in a fresh ``bash`` (no inherited environment but PATH and HOME)
    in a checkout-like folder holding the demo's run. PYTHONPATH points at this checkout only because the
    shared test venv's editable install may point at another one; a real clone's install is the checkout."""
    for name in ("tools", "tests", "configs", "megavg", ".venv"):
        (tmp_path / name).symlink_to(REPO / name)
    _demo_run(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "-e", "-c", _tour_block()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PSNR" in proc.stderr + proc.stdout
    rec, fox = read_video(tmp_path / "runs/tour/rec.mp4"), read_video(tmp_path / "runs/tour/fox.mp4")
    assert rec.shape[0] == 16  # --frames 16
    assert fox.shape == (8, 64, 96, 3)  # --frames 8 --size 64 96
