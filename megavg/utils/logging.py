"""Package logger and progress: one format, rank-aware, bars that log lines never cut, third-party noise off.

- :func:`get_logger`: the ``megavg`` logger (INFO, or ``MEGAVG_LOG_LEVEL``), written through ``tqdm.write``
  when tqdm is installed, so a log line printed while a progress bar is on screen appears above the bar.
- :func:`progress`: a tqdm bar on a terminal; in a log file or pipe, one INFO line every ``every_s``
  seconds and one at the end (a bar's carriage returns make unreadable logs).
- :func:`quiet_third_party`: drops known noise of the libraries megavg drives (installed once with the
  logger): DeepSpeed's accelerator auto-detection line on CPU machines (printed by every process that
  imports DeepSpeed, 4x per 2-process launch), and Hugging Face's progress bars.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

# DeepSpeed 0.19 deepspeed/accelerator/real_accelerator.py get_accelerator(): a WARNING when no GPU is found
# ("Setting accelerator to CPU. ...") and an INFO line naming the choice ("Setting ds_accelerator to ...").
NOISE = {"DeepSpeed": re.compile(r"^Setting (accelerator to CPU|ds_accelerator to )")}


class NoiseFilter(logging.Filter):
    """Drops records whose message matches ``pattern`` (a filter on a third-party logger)."""

    def __init__(self, pattern: re.Pattern) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def quiet_third_party() -> None:
    """Install the :data:`NOISE` filters (idempotent). Works before the library is imported: its logger
    object is created here and the library configures that same object later. Hugging Face progress bars
    (transformers' weight loading) are off unless ``HF_HUB_DISABLE_PROGRESS_BARS`` says otherwise: they
    would interleave with megavg's own progress lines."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    for name, pattern in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, NoiseFilter) for f in logger.filters):
            logger.addFilter(NoiseFilter(pattern))


class TqdmAwareHandler(logging.StreamHandler):
    """A stream handler that writes through ``tqdm.write`` (when tqdm is installed): open bars on the same
    stream are cleared, the line printed, the bars redrawn below it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            super().emit(record)
            return
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging's own policy: report, never raise
            self.handleError(record)


def plural(count: int, word: str, words: str = "") -> str:
    """``"1 process"``, ``"4 processes"``: the count and the word in the number it takes (``words``: the
    plural when it is not ``word + "s"``)."""
    return f"{count} {word if count == 1 else words or word + 's'}"


def get_logger(name: str = "megavg") -> logging.Logger:
    """Return the megavg logger (configured once, INFO level, rank prefix when distributed)."""
    root = logging.getLogger("megavg")
    if not root.handlers:
        handler = TqdmAwareHandler()
        rank = os.environ.get("RANK")
        prefix = f"[rank{rank}] " if rank is not None else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("MEGAVG_LOG_LEVEL", "INFO"))
        root.propagate = False
        quiet_third_party()
    return logging.getLogger(name)


class LogProgress:
    """Progress as log lines: ``desc: n/total unit`` every ``every_s`` seconds and at :meth:`close`."""

    def __init__(self, total: int | None, desc: str, unit: str, every_s: float, log: logging.Logger):
        self.total, self.desc, self.unit, self.every_s, self.log = total, desc, unit, every_s, log
        self.n, self.start = 0, time.perf_counter()
        self.last, self.logged = self.start, 0  # when the last line was written, and at which count

    def _line(self, now: float) -> None:
        of = f"/{self.total}" if self.total else ""
        rate = self.n / max(now - self.start, 1e-9)
        unit = plural(self.total or self.n, self.unit).partition(" ")[2]
        self.log.info("%s: %d%s %s (%.1f s, %.2f %s/s)", self.desc, self.n, of, unit, now - self.start,
                      rate, self.unit)  # fmt: skip
        self.logged = self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self._line(now)

    def close(self) -> None:
        if self.n != self.logged:  # the last update may have written this very line already
            self._line(time.perf_counter())
        self.n = self.logged = 0

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(total: int | None, desc: str, unit: str = "it", enabled: bool = True, every_s: float = 10.0,
             log: logging.Logger | None = None):  # fmt: skip
    """Progress of a long loop (``update(n)``, ``close()``, or use as a context manager): a tqdm bar when
    stderr is a terminal and tqdm is installed, else :class:`LogProgress` lines on ``log``; nothing when
    not ``enabled``."""
    if not enabled:
        return _NoProgress()
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
        except ImportError:
            pass
    return LogProgress(total, desc, unit, every_s, log or get_logger())


def disable_library_bars() -> None:
    """Turn off the progress bars of the Hugging Face libraries (hub downloads, transformers' weight
    loading), e.g. under ``--no-progress``; a no-op for those not installed."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
