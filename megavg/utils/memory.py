"""Host memory of this process: current and peak resident set size.

Peak comes from ``VmHWM`` in ``/proc/self/status`` (restartable for one phase: :func:`reset_peak_rss`),
which starts afresh in every new program. Not from
``ru_maxrss``: Linux keeps that across fork + exec, so a process started by a big parent (a launcher, a
benchmark driver) would report the parent's peak. Where ``/proc`` is missing (macOS) ``ru_maxrss`` is
the fallback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_mib(field: str) -> float | None:
    if not _STATUS.is_file():
        return None
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def rss_mib() -> float:
    """Resident set size of this process now, MiB (the peak where the current value is unavailable)."""
    now = _status_mib("VmRSS")
    return now if now is not None else peak_rss_mib()


def reset_peak_rss() -> bool:
    """Restart the peak (``VmHWM``) from the current RSS (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def return_large_frees_to_os(threshold_bytes: int = 256 * 1024) -> bool:
    """Make glibc serve every allocation of at least ``threshold_bytes`` with its own memory mapping, so
    that freeing it gives the memory back to the OS at once. Returns False where glibc is absent.

    Building a model under ``zero.Init`` in host memory allocates each layer whole, keeps 1/N of it and
    frees the rest; with glibc's default (a threshold that grows up to 32 MiB) those temporaries come
    from the heap and the holes they leave between the kept partitions stay resident: measured +34% of
    the kept partitions after building (1 rank, Wan 1.3B layers, fp32), +1% with this. Call before building.
    """
    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):
        return False
