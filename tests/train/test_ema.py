"""``model.ema`` config checks and the decay schedule (no processes; the EMA itself: tests/distributed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megavg.train.config import load_config
from megavg.train.ema import decay_at
from megavg.train.engine import deepspeed_config
from megavg.utils.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def test_decay_schedule_copies_until_start_then_every_n_steps():
    cfg = load_config(None, ["model.ema={decay: 0.99, start_step: 2, every: 3}"]).model.ema
    # steps 1-2: copy of the weights; then the decay on steps 5, 8 (3 after start), unchanged in between
    assert [decay_at(cfg, s) for s in range(1, 9)] == [0, 0, 1, 1, 0.99, 1, 1, 0.99]
    plain = load_config(None, ["model.ema.decay=0.5"]).model.ema
    assert [decay_at(plain, s) for s in range(1, 4)] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.ema.decay=1.5", r"model.ema.decay: must be in \[0, 1\]"),
        ("model.ema.decay=-0.1", r"model.ema.decay: must be in \[0, 1\]"),
        ("model.ema.every=0", "model.ema.every: must be >= 1"),
        ("model.ema.start_step=-1", "model.ema.start_step: must be >= 0"),
        ("model.ema.decai=0.9", "model.ema.decai: unknown key"),
    ],
)
def test_bad_ema_values_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def test_ema_off_by_default_and_needs_stage3_in_memory():
    assert not load_config(None).model.ema.enabled
    base = [f"parallel.deepspeed={REPO / 'configs/deepspeed/zero3_fp32.json'}", "model.ema.decay=0.9"]
    assert deepspeed_config(load_config(None, base))["zero_optimization"]["stage"] == 3
    stage2 = "parallel.deepspeed_overrides={zero_optimization: {stage: 2}}"
    with pytest.raises(UserError, match="model.ema: needs ZeRO stage 3"):
        deepspeed_config(load_config(None, [*base, stage2]))
    nvme = "parallel.deepspeed_overrides={zero_optimization: {offload_optimizer: {device: nvme}}}"
    with pytest.raises(UserError, match="model.ema: not supported with NVMe"):
        deepspeed_config(load_config(None, [*base, nvme]))
