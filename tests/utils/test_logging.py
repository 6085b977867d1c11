"""megavg's logging: DeepSpeed's accelerator noise filtered, log lines above (not inside) progress bars,
progress as periodic log lines when the output is not a terminal."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from megavg.utils import logging as mlog
from tests.conftest import Catcher


def test_deepspeed_accelerator_lines_are_dropped(monkeypatch):
    import deepspeed.accelerator.real_accelerator as real

    mlog.get_logger()
    ds_logger = logging.getLogger("DeepSpeed")
    catch = Catcher(logging.DEBUG)
    ds_logger.addHandler(catch)
    try:
        for env in ({}, {"DS_ACCELERATOR": "cpu"}):  # auto-detection (WARNING on CPU) and override (INFO)
            monkeypatch.delenv("DS_ACCELERATOR", raising=False)
            monkeypatch.setattr(real, "ds_accelerator", None)  # detect again, as a fresh process does
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            real.get_accelerator()
        ds_logger.warning("ZeRO: something that matters")
    finally:
        ds_logger.removeHandler(catch)
    assert catch.messages == ["ZeRO: something that matters"]


def test_log_line_printed_above_an_open_bar():
    from tqdm import tqdm

    stream = io.StringIO()
    logger = logging.getLogger("megavg.test_bar")
    handler = mlog.TqdmAwareHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with tqdm(total=3, desc="sampling", file=stream, mininterval=0) as bar:
            bar.update(1)
            logger.warning("a line of its own")
            bar.update(1)
    finally:
        logger.removeHandler(handler)
    rows = [row.rsplit("\r", 1)[-1] for row in stream.getvalue().split("\n")]  # what stays on screen
    assert "a line of its own" in rows
    assert rows[-2].startswith("sampling:  67%") and rows[-1] == ""  # the bar, redrawn below it


def test_plural():
    assert [mlog.plural(n, "frame") for n in (0, 1, 2)] == ["0 frames", "1 frame", "2 frames"]
    assert mlog.plural(1, "process", "processes") == "1 process"
    assert mlog.plural(4, "process", "processes") == "4 processes"


@pytest.mark.parametrize("every_s", [0.0, 3600.0])
def test_progress_without_terminal_is_log_lines(every_s):
    log = logging.getLogger("megavg.test_progress")
    catch = Catcher(logging.DEBUG)
    log.addHandler(catch)
    try:
        with mlog.progress(3, "reconstruct", "frame", every_s=every_s, log=log) as bar:
            for _ in range(3):
                bar.update()
        with mlog.progress(3, "quiet", enabled=False) as bar:
            bar.update(3)
    finally:
        log.removeHandler(catch)
    counts = [m.split(" frames")[0] for m in catch.messages]
    assert counts == (["reconstruct: 1/3", "reconstruct: 2/3", "reconstruct: 3/3"]  # the last line once
                      if every_s == 0 else ["reconstruct: 3/3"])  # fmt: skip


@pytest.mark.parametrize("first", ["megavg", "transformers"])
def test_transformers_progress_bars_are_off_whichever_is_imported_first(first):
    """transformers' weight-loading bars would interleave with megavg's progress lines."""
    imports = ["from megavg.utils.logging import get_logger; get_logger()", "import transformers"]
    code = "\n".join(imports if first == "megavg" else imports[::-1])
    code += "\nfrom transformers.utils import logging\nprint(logging.is_progress_bar_enabled())"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
