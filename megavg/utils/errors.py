"""One error type for bad user input, and the CLI wrapper that turns it into one line and exit code 2
(and Ctrl-C into one line and exit code 130, the shell's code for SIGINT)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from safetensors import SafetensorError


class UserError(Exception):
    """Bad input from the user (file, config, checkpoint): the message names the thing and the problem."""


EXIT_INTERRUPTED = 130  # 128 + SIGINT

# What a transformers ``from_pretrained`` of a local folder raises for a missing, unreadable or corrupt file:
# a truncated ``.safetensors`` raises SafetensorError, which is neither an OSError nor a ValueError.
LOAD_ERRORS = (OSError, ValueError, SafetensorError)


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run ``main(argv)``; a :class:`UserError` prints ``error: <message>`` on one line and exits 2; Ctrl-C
    (``KeyboardInterrupt``) prints ``interrupted`` on one line and exits 130 (outputs are written through
    temporary names, so nothing half-written is left)."""
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)  # after a progress bar's unfinished line
        sys.exit(EXIT_INTERRUPTED)
