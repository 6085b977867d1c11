"""Preemption: SIGUSR1 / SIGTERM set a flag; every step all ranks agree on it (one all-reduce).

SLURM sends SIGTERM (then SIGKILL ~30 s later) at the time limit, and ``--signal=USR1@T`` earlier.
A signal may reach only some ranks; the MAX all-reduce makes every rank save and stop at the same step.
"""

from __future__ import annotations

import signal

from megavg.utils.device import agree

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopFlag:
    """Set by the signal handlers installed with :meth:`install`."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> StopFlag:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def agreed(self) -> bool:
        """True on every rank when any rank has received a stop signal (collective)."""
        return agree(self.signum is not None, every=False)
