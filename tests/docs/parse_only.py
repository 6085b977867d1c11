"""Parse documented command lines with each entry point's own argparse parser, then stop before any work.

    python tests/docs/parse_only.py < commands.json > results.json

Input: a JSON list of ``[entry, argv]``; ``entry`` is a script path (``tools/consolidate.py``) or
``-m module``. Each entry runs as ``python ENTRY ARGV...`` would run it (``runpy``, ``sys.argv`` set) with
``parse_args`` / ``parse_intermixed_args`` replaced: the first call checks that every ``--flag`` of ARGV is an
option string of that parser spelled out in full (``--help`` lists it; argparse would also accept a prefix),
parses ARGV for real (argparse's own errors: unknown flags, missing or extra positionals, bad choices or
types), and then stops the run. Output: one ``{"ok": bool, "message": str}`` per command, in order. All
commands share one interpreter, so torch and the entry modules are imported once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import runpy
import sys


class _Parsed(BaseException):
    """Raised once the documented argv has parsed: stops the entry point before it does any work."""


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """The parser's option strings and those of its sub-commands (``python -m megavg.eval fvd --i3d``)."""
    known = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                known |= _option_strings(sub)
    return known


def _full_flags(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The first ``--flag`` in argv that is not one of the parser's option strings (None: all are)."""
    known = _option_strings(parser)
    for token in argv:
        if token == "--":
            break
        if token.startswith("--") and token.split("=", 1)[0] not in known:
            return token.split("=", 1)[0]
    return None


def _parse_then_stop(original):
    """``original`` (``parse_args`` or ``parse_intermixed_args``) with the full-flag check, then stop."""

    def patched(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        missing = _full_flags(self, argv)
        if missing is not None:
            self.error(f"the documented flag {missing} is not an option of this command (see --help)")
        original(self, argv, namespace)
        raise _Parsed

    return patched


_PARSERS = ("parse_args", "parse_intermixed_args")  # each entry point parses with one of these


def check(entry: str, argv: list[str]) -> dict:
    """Run one entry point with ``argv`` until its arguments are parsed."""
    err = io.StringIO()
    old_argv = sys.argv
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if entry.startswith("-m "):
                sys.argv = [entry[3:], *argv]
                runpy.run_module(entry[3:], run_name="__main__", alter_sys=True)
            else:
                sys.argv = [entry, *argv]
                runpy.run_path(entry, run_name="__main__")
    except _Parsed:
        return {"ok": True, "message": ""}
    except SystemExit as exc:
        if exc.code in (0, None) and ("--help" in argv or "-h" in argv):  # argparse printed the help
            return {"ok": True, "message": ""}
        lines = err.getvalue().strip().splitlines() or [f"exit {exc.code}"]
        return {"ok": False, "message": lines[-1]}
    except Exception as exc:  # an import error names the missing module
        return {"ok": False, "message": f"{type(exc).__name__}: {exc}"}
    finally:
        sys.argv = old_argv
    return {"ok": False, "message": "finished without parsing its arguments with argparse"}


def main() -> None:
    for name in _PARSERS:
        setattr(argparse.ArgumentParser, name, _parse_then_stop(getattr(argparse.ArgumentParser, name)))
    commands = json.load(sys.stdin)
    json.dump([check(entry, argv) for entry, argv in commands], sys.stdout)


if __name__ == "__main__":
    main()
