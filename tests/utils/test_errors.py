"""run_cli: a UserError is one ``error:`` line and exit 2; Ctrl-C is one line and exit 130."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from megavg.utils.errors import UserError, run_cli


def raise_(exc):
    def main(argv):
        raise exc

    return main


def test_user_error_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(raise_(UserError("x.mp4: not a video")))
    assert exit_.value.code == 2 and capsys.readouterr().err == "error: x.mp4: not a video\n"


def test_ctrl_c_is_one_line_exit_130(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(raise_(KeyboardInterrupt()))
    assert exit_.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"


def test_sigint_in_a_running_command_leaves_no_traceback():
    """A real SIGINT while ``main`` runs (as Ctrl-C in a terminal delivers it). The child starts with
    SIGINT's default action, as a terminal's foreground job does: a job started with ``&`` from a
    non-interactive shell (how CI or ``nohup`` may run the suite) inherits SIGINT ignored, Python then
    installs no KeyboardInterrupt handler, and the signal would never arrive."""
    code = (
        "import os, signal\n"
        "from megavg.utils.errors import run_cli\n"
        "def main(argv):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    while True:\n"
        "        pass\n"
        "run_cli(main)\n"
    )
    foreground = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=foreground
    )
    assert proc.returncode == 128 + signal.SIGINT
    assert proc.stderr.strip() == "interrupted"
