"""Peak RSS of a process is its own, not its parent's (what ``ru_maxrss`` would report after exec)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megavg.utils.memory import peak_rss_mib, reset_peak_rss, rss_mib

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")


def test_peak_follows_an_allocation_and_a_child_reports_its_own():
    before = rss_mib()
    block = torch.ones(400 * 2**20 // 4)  # 400 MiB, touched
    now = rss_mib()
    assert now >= before + 350 and peak_rss_mib() >= now
    parent_peak = peak_rss_mib()
    code = "from megavg.utils.memory import peak_rss_mib; print(peak_rss_mib())"
    child_peak = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    assert child_peak < parent_peak - 300, (child_peak, parent_peak)
    del block


def test_reset_peak_restarts_from_the_current_rss():
    block = torch.ones(200 * 2**20 // 4)  # 200 MiB, touched
    del block  # a large block is returned to the OS at once (mmap)
    high = peak_rss_mib()
    assert reset_peak_rss()
    assert peak_rss_mib() < high - 150
