"""Weights-only loading: refusals say what was refused; damaged files name the file and the reason."""

from __future__ import annotations

import os

import pytest
import torch

from megavg.utils.errors import UserError
from megavg.utils.torchload import load_weights_only


class _Custom:
    pass


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize(
    ("payload", "refused"),
    [(_RunsCode(), f"{os.name}.system"), (_Custom(), f"{__name__}._Custom")],
    ids=["function", "class"],
)
def test_refused_globals_are_named_without_torchs_advice(tmp_path, payload, refused):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "extra": payload}, path)
    with pytest.raises(UserError) as info:
        load_weights_only(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused to unpickle the Python object {refused}:"), message
    assert "never unpickles code" in message
    assert "weights_only=False" not in message and "\n" not in message  # no advice to turn the check off


def test_damaged_files_name_the_file_and_the_reason(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(3.0)}, good)
    assert torch.equal(load_weights_only(good)["w"], torch.arange(3.0))
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("cut.pt", "text.pt", "empty.pt", "missing.pt"):
        with pytest.raises(UserError, match=rf"{name}: not loadable with torch.load\(weights_only=True\) \("):
            load_weights_only(tmp_path / name)
