"""FP8 recipe logic that is ours (block selection, recipe settings, checkpoint scaling state); no GPU."""

from __future__ import annotations

import pytest
import torch

from megavg.layers import Fp8Config, LayerConfig, fp8_blocks
from megavg.layers.fp8 import fp8_autocast, recipe_kwargs, state_for_load
from megavg.utils.errors import UserError
from megavg.utils.schema import from_dict


def test_first_and_last_blocks_stay_bf16():
    cfg = Fp8Config(enabled=True, bf16_first_blocks=1, bf16_last_blocks=2)
    assert fp8_blocks(6, cfg) == [False, True, True, True, False, False]
    assert fp8_blocks(3, Fp8Config(enabled=False)) == [False] * 3
    everything = Fp8Config(enabled=True, recipe="delayed", bf16_first_blocks=0, bf16_last_blocks=0)
    assert fp8_blocks(2, everything) == [True, True]


def test_recipe_settings():
    delayed = Fp8Config(
        recipe="delayed", amax_history_len=16, margin=1, bf16_first_blocks=0, bf16_last_blocks=0
    )
    assert recipe_kwargs(delayed) == {
        "fp8_format": "HYBRID", "margin": 1, "amax_history_len": 16, "amax_compute_algo": "max",
    }  # fmt: skip
    assert recipe_kwargs(Fp8Config(format="e4m3")) == {"fp8_format": "E4M3"}


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"fp8": {"enabled": True, "recipe": "delayed"}}, "needs recipe 'current'"),
        ({"linear": "torch", "fp8": {"enabled": True}}, "needs linear 'te'"),
        ({"fp8": {"amax_history_len": 0}}, "amax_history_len"),
        ({"fp8": {"recipe": "mxfp8"}}, "not one of"),
    ],
)
def test_bad_fp8_configs_are_user_errors(cfg, message):
    with pytest.raises(UserError, match=message):
        from_dict(LayerConfig, cfg)


def test_scaling_state_around_checkpoints():
    state = {"blocks.0.q.weight": torch.ones(2), "blocks.0.q._extra_state": torch.zeros(3)}
    assert set(state_for_load(state, Fp8Config(enabled=True))) == {"blocks.0.q.weight"}
    keep = Fp8Config(
        enabled=True, recipe="delayed", reset_amax_on_load=False, bf16_first_blocks=0, bf16_last_blocks=0
    )
    assert set(state_for_load(state, keep)) == set(state)


def test_disabled_autocast_needs_no_transformer_engine():
    with fp8_autocast(False, Fp8Config()):
        assert torch.ones(1).item() == 1.0
