"""The DeepSpeed floor (ZeRO-3 + non-reentrant recompute + frozen parameters, DeepSpeed PR #8148): setup.py
and the launch-time check agree, and an older DeepSpeed is refused with one clear error."""

from __future__ import annotations

import re

import pytest

from megavg.train.engine import MIN_DEEPSPEED, check_deepspeed_version
from megavg.utils.errors import UserError
from tests.distributed.launch import REPO


def test_older_deepspeed_is_refused():
    with pytest.raises(UserError, match=r"deepspeed 0\.19\.2 is too old.*PR #8148"):
        check_deepspeed_version("0.19.2")
    check_deepspeed_version("0.19.3")
    check_deepspeed_version("0.20.1+cu128")


def test_setup_floor_is_the_checked_floor():
    floor = re.search(r'"deepspeed>=([0-9.]+)"', (REPO / "setup.py").read_text()).group(1)
    assert floor == MIN_DEEPSPEED
