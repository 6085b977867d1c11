"""``parallel.timeout_minutes`` reaches the process group: a collective that waits longer for a rank fails
instead of hanging (issue 23: megavg left the timeout at DeepSpeed's default while rank 0 alone encoded
validation prompts and the others waited in a barrier)."""

from __future__ import annotations

import re

import pytest

from tests.distributed.launch import REPO, torchrun

WORKER = REPO / "tests" / "distributed" / "timeout_worker.py"


@pytest.mark.distributed
def test_a_collective_waiting_past_timeout_minutes_fails(tmp_path, monkeypatch):
    """Timeout 0.05 min (3 s); rank 1 is 15 s late. With the timeout wired, rank 0's barrier raises after
    about 3 s; with the default it waits the 15 s and returns (red run: "barrier returned after 15.1 s")."""
    monkeypatch.setenv("MEGAVG_TEST_TIMEOUT_MIN", "0.05")
    monkeypatch.setenv("MEGAVG_TEST_LATE_S", "15")
    out = torchrun(WORKER, 2, tmp_path, timeout=300).stdout
    match = re.search(r"barrier (\w+) after ([\d.]+) s", out)
    assert match, out
    assert match.group(1) == "raised", out
    assert 2.5 <= float(match.group(2)) < 12.0, out  # the 3 s timeout, not rank 1's 15 s lateness
