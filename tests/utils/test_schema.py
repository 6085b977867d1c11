from dataclasses import dataclass, field
from typing import Literal

import pytest

from megavg.utils.errors import UserError
from megavg.utils.schema import from_dict, to_dict


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    size: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_round_trip_and_coercion():
    cfg = from_dict(Outer, {"steps": 3, "inner": {"lr": 1, "betas": [0.5, 0.6]}})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.betas == (0.5, 0.6)
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_float_fields_take_yaml_1_1_exponent_strings():
    """YAML 1.1 (PyYAML) reads `1e-4` as the string '1e-4': a float field takes it as a float."""
    cfg = from_dict(Outer, {"name": "1e-4", "inner": {"lr": "1e-4", "betas": ["5E-1", "+.9"]}})
    assert cfg.inner.lr == 1e-4 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.betas == (0.5, 0.9)
    assert cfg.name == "1e-4"  # a str field keeps the string
    for bad in ("fast", "nan", "1e", "0x10", "1_000"):
        with pytest.raises(UserError, match="config inner.lr: expected float"):
            from_dict(Outer, {"inner": {"lr": bad}})
    with pytest.raises(UserError, match="config steps: expected int"):
        from_dict(Outer, {"steps": "1e3"})  # only float fields convert


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"stepz": 3}, "config stepz: unknown key"),
        ({"inner": {"lrr": 1}}, "config inner.lrr: unknown key"),
        ({"steps": "3"}, "config steps: expected int"),
        ({"steps": True}, "config steps: expected an integer"),
        ({"flag": 1}, "config flag: expected true/false"),
        ({"mode": "c"}, "config mode: 'c' is not one of"),
        ({"inner": {"betas": [0.1]}}, "config inner.betas: expected 2 items"),
        ({"size": "big"}, "config size: expected int"),
    ],
)
def test_bad_values_name_the_key(data, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        from_dict(Outer, data)
