"""One error type for bad user input, and the CLI wrapper that turns it into one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user (file, config, checkpoint): the message names the thing and the problem."""


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run ``main(argv)``; a :class:`UserError` prints ``error: <message>`` on one line and exits 2."""
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
