"""How temporal SP splits a clip over ranks (pure function; the multi-process run is in distributed/)."""

from __future__ import annotations

import pytest
import torch

import megavg.models as mm
from megavg.models.dcaev.parallelize import apply_activation_checkpointing, time_split
from megavg.utils.errors import UserError


def test_whole_chunks_balanced_first_ranks_get_the_extra():
    assert time_split(40, 8, 3) == [(0, 16), (16, 32), (32, 40)]
    assert time_split(37, 8, 2) == [(0, 24), (24, 37)]  # the partial chunk sits on the last rank
    assert time_split(400, 40, 4) == [(0, 120), (120, 240), (240, 320), (320, 400)]
    for start, end in time_split(37, 8, 3)[:-1]:
        assert start % 8 == 0 and end % 8 == 0


def test_fewer_chunks_than_ranks_is_an_error():
    with pytest.raises(UserError, match="fewer than 4 ranks"):
        time_split(20, 8, 4)


def test_activation_checkpointing_keeps_keys_and_gradients():
    torch.manual_seed(0)
    model = mm.build("dc-ae-v-tiny")
    x = torch.rand(1, 3, 16, 16, 16) * 2 - 1
    model(x).square().sum().backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    keys = list(model.state_dict())
    apply_activation_checkpointing(model)
    model(x).square().sum().backward()
    assert list(model.state_dict()) == keys
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[k], rtol=1e-5, atol=1e-6)
