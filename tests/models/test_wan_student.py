"""DC-VideoGen student: shared backbone byte for byte, new embedder/head shapes, zero output at init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from megavg.models import build
from megavg.models.wan.student import make_student
from megavg.utils.errors import UserError
from megavg.utils.schema import to_dict
from tests.models.wan_reference import inputs

NEW = ("patch_embed.", "head.linear.")


def random_base(preset: str):
    model = build(preset)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


@pytest.mark.parametrize(
    ("base_preset", "student_preset", "in_ch", "out_ch"),
    [("wan-tiny-t2v", "wan-tiny-student-t2v", 8, 8), ("wan-tiny-i2v", "wan-tiny-student-i2v", 20, 8)],
)
def test_student_shares_weights_and_starts_at_zero(base_preset, student_preset, in_ch, out_ch):
    base = random_base(base_preset)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    student = make_student(base, in_channels=in_ch, out_channels=out_ch)
    assert to_dict(student.args) == to_dict(build(student_preset).args)

    state = student.state_dict()
    assert state.keys() == before.keys()
    for key, value in state.items():
        if key.startswith(NEW):
            continue
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
        assert value.data_ptr() == base.state_dict()[key].data_ptr(), f"{key} is not shared"
    assert state["patch_embed.weight"].shape == (64, in_ch, 1, 1, 1)
    assert state["head.linear.weight"].shape == (out_ch, 64)

    x = inputs(student.args, grid=(2, 3, 4))
    out = student(*x)
    assert out.shape == (2, out_ch, 2, 3, 4)
    assert torch.count_nonzero(out) == 0
    out.square().add(out).sum().backward()
    assert student.head.linear.weight.grad.abs().sum() > 0


def test_copy_and_aligned_embedder():
    base = random_base("wan-tiny-t2v")
    aligned = nn.Conv3d(8, 64, 1)
    student = make_student(base, 8, 8, patch_embed=aligned, copy=True)
    assert student.patch_embed is aligned
    q_student, q_base = student.blocks[0].self_attn.q.weight, base.blocks[0].self_attn.q.weight
    assert torch.equal(q_student, q_base) and q_student.data_ptr() != q_base.data_ptr()
    with pytest.raises(UserError, match="patch embedder"):
        make_student(base, 8, 8, patch_embed=nn.Conv3d(16, 64, 1))
