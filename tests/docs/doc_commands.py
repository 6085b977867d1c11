"""Shell commands of the Markdown docs, and what the docs test checks for each of them.

A command is one line of a ```bash / ```sh block (``\\``-continued lines joined, ``# comments`` dropped,
leading ``NAME=value`` environment assignments set aside). Each checked command becomes a list of
:class:`Check`: ``parse`` (an entry point parses the documented argv: ``tests/docs/parse_only.py``),
``config`` (training overrides are keys of the config tree), ``file`` (a script exists), ``module`` (a
third-party module such as pytest is installed; never run) or ``error``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHELL_LANGS = {"bash", "sh", "shell"}
CHECKED = {"python", "python3", "bash", "deepspeed", "torchrun", "sbatch"}
LAUNCHER_JOBS = {  # launchers/lib.sh: megavg_prepare
    "train": "-m megavg.train",
    "precompute": "-m megavg.infer.precompute",
    "export": "-m megavg.train.consolidate",
}
OWN_MODULES = ("-m megavg.", "-m deepspeed.launcher.runner", "-m torch.distributed.run")
DEMO_CONFIG = "configs/train/dcaev_demo.yaml"  # tools/demo.sh passes its arguments as overrides of it
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Command:
    where: str  # "docs/training.md:12"
    text: str  # the joined line as written
    tokens: tuple[str, ...] | None  # None: uses a shell substitution (run by the tour test only)


@dataclass(frozen=True)
class Check:
    kind: str  # parse | config | file | module | error
    target: str  # entry ("tools/x.py" or "-m mod"), config path, file path, or the error message
    args: tuple[str, ...] = ()


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """(1-based line of the block's first line, block text) of every shell code block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = lines[i].strip()
        if fence.startswith("```") and fence[3:].strip() in SHELL_LANGS:
            start, body = i + 2, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((start, "\n".join(body)))
        i += 1
    return blocks


def commands(text: str, name: str) -> list[Command]:
    """Every command line of the shell blocks of one Markdown text."""
    found = []
    for start, block in shell_blocks(text):
        lines = block.split("\n")
        i = 0
        while i < len(lines):
            first, joined = i, lines[i]
            while joined.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                joined = joined.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            if not joined.strip() or joined.strip().startswith("#"):
                continue
            tokens = None if "$(" in joined else tuple(shlex.split(joined, comments=True))
            found.append(Command(f"{name}:{start + first}", joined.strip(), tokens))
    return found


def strip_env(tokens: tuple[str, ...]) -> tuple[str, ...]:
    i = 0
    while i < len(tokens) and _ENV.match(tokens[i]):
        i += 1
    return tokens[i:]


def is_checked(command: Command) -> bool:
    tokens = strip_env(command.tokens) if command.tokens is not None else ()
    return bool(tokens) and tokens[0] in CHECKED


def _entry(entry: str, args: tuple[str, ...]) -> list[Check]:
    """An entry point (script or ``-m module``) and its argv; megavg.train's overrides are checked too."""
    if entry.startswith("tests/"):  # a test helper run as a script (no argparse): exists; the tour runs it
        return [Check("file", entry)]
    if entry.startswith("-m ") and not entry.startswith(OWN_MODULES):  # pytest, ruff: installed, not run
        return [Check("module", entry[3:])]
    checks = [] if entry.startswith("-m ") else [Check("file", entry)]
    checks.append(Check("parse", entry, args))
    if entry == "-m megavg.train":
        checks.append(_train_config(args))
    return checks


def _train_config(args: tuple[str, ...]) -> Check:
    if "--config" not in args or args.index("--config") + 1 >= len(args):
        return Check("error", "megavg.train without --config")
    i = args.index("--config")
    overrides = tuple(a for a in args[:i] + args[i + 2 :] if "=" in a)
    return Check("config", args[i + 1], overrides)


def _python(args: tuple[str, ...]) -> list[Check]:
    if args[:1] == ("-c",):
        return []
    if args[:1] == ("-m",):
        return _entry(f"-m {args[1]}", args[2:])
    return _entry(args[0], args[1:])


def _split_launcher(args: tuple[str, ...], module_flags: tuple[str, ...]) -> tuple[int, str]:
    """Index of the user entry in a launcher's argv, and the entry ("-m mod" or a script path)."""
    for i, arg in enumerate(args):
        if arg in module_flags:
            return i + 1, f"-m {args[i + 1]}"
        if arg.endswith(".py"):
            return i, arg
    raise ValueError("no module or script")


def _launched(launcher: str, module_flags: tuple[str, ...], args: tuple[str, ...]) -> list[Check]:
    try:
        i, entry = _split_launcher(args, module_flags)
    except (ValueError, IndexError):
        return [Check("error", f"{launcher}: no --module / script found")]
    return [Check("parse", launcher, args[: i + 1]), *_entry(entry, args[i + 1 :])]


def _launcher_job(script: str, args: tuple[str, ...]) -> list[Check]:
    """launchers/megavg.sbatch and launchers/local.sh: JOB [ARGS]; train's ARGS are CONFIG [overrides]."""
    checks = [Check("file", script)]
    if not args or args[0] not in LAUNCHER_JOBS:
        return [*checks, Check("error", f"{script}: job must be one of {sorted(LAUNCHER_JOBS)}")]
    rest = args[1:]
    if args[0] == "train":
        rest = ("--config", *rest)
    return checks + _entry(LAUNCHER_JOBS[args[0]], rest)


def _bash(args: tuple[str, ...]) -> list[Check]:
    script, rest = args[0], args[1:]
    if script.startswith("launchers/"):
        return _launcher_job(script, rest)
    checks = [Check("file", script)]
    if script == "tools/demo.sh" and rest[:1] == ("adapt",):  # the adaptation demo takes no other argument
        checks.append(Check("file", "tools/demo_adapt.sh"))
        checks += [Check("error", f"bash tools/demo.sh adapt takes no arguments, got {a}") for a in rest[1:]]
    elif script == "tools/demo.sh":
        checks.append(Check("config", DEMO_CONFIG, rest))
    elif script == "tools/reproduce.sh":  # its arguments go to python -m megavg.repro
        checks += _entry("-m megavg.repro", rest)
    elif script == "tools/test.sh":
        checks += [Check("error", f"tools/test.sh does not handle {a}") for a in rest
                   if a in ("--quick", "--all") and a not in (REPO / script).read_text()]  # fmt: skip
    elif script == "tools/gpu_check.sh":  # its own options, or tools/gpu_check.py's (it forwards them)
        known = (REPO / script).read_text() + (REPO / "tools/gpu_check.py").read_text()
        checks += [Check("error", f"{script} does not handle {a}") for a in rest
                   if a.startswith("--") and f'"{a}"' not in known and f"{a})" not in known]  # fmt: skip
    elif rest:
        checks.append(Check("error", f"{script} takes no arguments"))
    return checks


def checks_for(command: Command) -> list[Check]:
    """What the docs test verifies for one command (empty: a command it does not check)."""
    if not is_checked(command):
        return []
    tokens = strip_env(command.tokens)
    head, args = tokens[0], tokens[1:]
    if head in ("python", "python3"):
        return _python(args)
    if head == "bash":
        return _bash(args)
    if head == "deepspeed":
        return _launched("-m deepspeed.launcher.runner", ("--module",), args)
    if head == "torchrun":
        return _launched("-m torch.distributed.run", ("-m", "--module"), args)
    sbatch = [i for i, a in enumerate(args) if a.endswith(".sbatch")]  # sbatch's own options: not checked
    if not sbatch:
        return [Check("error", "sbatch without a batch script")]
    return _launcher_job(args[sbatch[0]], args[sbatch[0] + 1 :])


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def all_commands() -> list[Command]:
    found = []
    for path in doc_files():
        found += commands(path.read_text(), str(path.relative_to(REPO)))
    return found
