"""SIGUSR1 and SIGTERM set the stop flag instead of killing the process (single process, no group)."""

from __future__ import annotations

import os
import signal

import pytest

from megavg.train.signals import STOP_SIGNALS, StopFlag


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_stop_signal_sets_the_flag(signum):
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    try:
        flag = StopFlag().install()
        assert not flag.agreed()
        os.kill(os.getpid(), signum)
        assert flag.signum == signum and flag.agreed()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
