"""DataConfig as the ``data:`` section of a YAML config: strict keys, tuple sizes, clear errors."""

from __future__ import annotations

import pytest

from megavg.data import DataConfig
from megavg.utils.errors import UserError
from megavg.utils.schema import from_dict, to_dict


def test_yaml_lists_become_buckets():
    cfg = from_dict(DataConfig, {"shards": "d", "size": [32, 48], "buckets": [[16, 32], [32, 16]]}, "data")
    assert cfg.size == (32, 48) and cfg.bucket_sizes == [(16, 32), (32, 16)]
    assert DataConfig(size=(8, 16)).bucket_sizes == [(8, 16)]
    assert from_dict(DataConfig, to_dict(cfg), "data") == cfg


@pytest.mark.parametrize(
    "data, message",
    [({"frames": 6, "chunk": 4}, "data.frames: 6 is not a multiple of data.chunk=4"),
     ({"batch_size": 0}, "data.batch_size: must be >= 1"),
     ({"kind": "images"}, "data.kind: 'images' is not one of"),
     ({"buckets": [[16, 0]]}, "must be positive"),
     ({"frame": 8}, "data.frame: unknown key")],
)  # fmt: skip
def test_bad_values_name_the_key(data, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        from_dict(DataConfig, data, "data")
