"""The model folder format: round trips (single file and sharded), partial reads, and clear errors."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

import megavg.models
from megavg.models import registry
from megavg.utils.errors import UserError
from megavg.utils.lazy import materialize
from megavg.utils.schema import to_dict


@pytest.fixture
def model():
    return megavg.models.build("dc-ae-v-tiny")


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("shard_bytes", [None, 64 * 1024])
def test_round_trip(model, tmp_path, monkeypatch, shard_bytes):
    if shard_bytes:
        monkeypatch.setattr(registry, "MAX_SHARD_BYTES", shard_bytes)
    model.save(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert (registry.INDEX_NAME in files) == bool(shard_bytes)
    if shard_bytes:
        assert len([f for f in files if f.endswith(".safetensors")]) > 2
    again = megavg.models.load(tmp_path / "m")
    assert again.args == model.args and _same_weights(again, model)
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (tmp_path / "m").iterdir():  # readable as any file the user writes (not 0600)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
    key = next(iter(model.state_dict()))
    assert list(registry.load_state_dict(tmp_path / "m", [key])) == [key]


def test_meta_build_allocates_nothing():
    with torch.device("meta"):
        big = megavg.models.build("dc-ae-v-f32t4c32")
    assert all(p.is_meta for p in big.parameters())


def test_errors_name_the_folder_and_problem(model, tmp_path):
    with pytest.raises(UserError, match="not a megavg model folder"):
        megavg.models.load(tmp_path)
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / registry.WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(UserError, match="unreadable safetensors"):
        megavg.models.load(tmp_path / "m")
    megavg.models.build("dc-ae-v-small").save(tmp_path / "other")
    config = json.loads((tmp_path / "other" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    model.save(tmp_path / "tiny")
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(config))  # tiny weights, small config
    with pytest.raises(UserError, match="weights do not match the model|has shape"):
        megavg.models.load(tmp_path / "tiny")
    with pytest.raises(UserError, match="unknown model preset 'nope'"):
        megavg.models.build("nope")


def test_nonfinite_weights_rejected(model, tmp_path):
    model.save(tmp_path / "m")
    state = registry.load_state_dict(tmp_path / "m")
    next(iter(state.values()))[0].fill_(float("nan"))
    save_file(state, str(tmp_path / "m" / registry.WEIGHTS_NAME))  # a folder written by something else
    with pytest.raises(UserError, match="NaN or Inf"):
        megavg.models.load(tmp_path / "m")
    with pytest.raises(UserError, match="NaN or Inf"):  # and megavg never writes one
        registry.save_state("dcaev", {}, state, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()


class LazyTensor:
    """Stands for a DeepSpeed zero_to_fp32 lazy tensor; logs when it is materialised."""

    def __init__(self, key, tensor, log):
        self.key, self.tensor, self.log = key, tensor, log
        self.shape, self.dtype = tensor.shape, tensor.dtype

    def contiguous(self):
        self.log.append(("materialise", self.key))
        return self.tensor.clone()


def test_lazy_tensors_are_materialised_one_shard_at_a_time(model, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "MAX_SHARD_BYTES", 64 * 1024)
    log = []
    real_save_file = registry.save_file

    def logging_save_file(tensors, path, metadata=None):
        log.append(("write", tuple(tensors)))
        real_save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(registry, "save_file", logging_save_file)
    state = model.state_dict()
    lazy = {k: LazyTensor(k, v, log) for k, v in state.items()}
    registry.save_state("dcaev", to_dict(model.args), lazy, tmp_path / "m")
    writes = [i for i, (what, _) in enumerate(log) if what == "write"]
    assert len(writes) > 2
    materialised_before = 0
    for i in writes:  # each write follows exactly the materialisation of its own keys
        keys = log[i][1]
        assert [k for what, k in log[materialised_before:i]] == list(keys)
        materialised_before = i + 1
    again = megavg.models.load(tmp_path / "m")
    assert _same_weights(again, model)


@pytest.mark.parametrize("shard_bytes", [None, 64 * 1024])
def test_lazy_read_gives_shapes_and_dtypes_and_reads_on_demand(model, tmp_path, monkeypatch, shard_bytes):
    if shard_bytes:
        monkeypatch.setattr(registry, "MAX_SHARD_BYTES", shard_bytes)
    state = {k: v.to(torch.bfloat16) if i % 2 else v for i, (k, v) in enumerate(model.state_dict().items())}
    registry.save_state("dcaev", to_dict(model.args), state, tmp_path / "m")
    lazy = registry.load_state_dict(tmp_path / "m", lazy=True)
    assert list(lazy) == list(registry.load_state_dict(tmp_path / "m"))
    assert all(isinstance(v, registry.StoredTensor) for v in lazy.values())
    for key, ref in state.items():
        assert (lazy[key].shape, lazy[key].dtype) == (ref.shape, ref.dtype), key
        assert torch.equal(materialize(lazy[key]), ref), key
    registry.save_state("dcaev", to_dict(model.args), lazy, tmp_path / "copy")  # lazy in, lazy out
    assert _same_weights(megavg.models.load(tmp_path / "copy"), megavg.models.load(tmp_path / "m"))


def test_read_flat_reads_any_flat_range_of_a_stored_tensor(tmp_path):
    tensors = {"rows": torch.randn(7, 5, 3), "lead1": torch.randn(1, 1, 13), "vec": torch.randn(11),
               "scalar": torch.tensor(3.0), "lead1b": torch.randn(1, 4, 6)}  # fmt: skip
    save_file(tensors, str(tmp_path / "t.safetensors"))
    for key, tensor in tensors.items():
        stored = registry.StoredTensor(str(tmp_path / "t.safetensors"), key, tensor.shape, tensor.dtype)
        flat, n = tensor.reshape(-1), tensor.numel()
        for start in range(n + 1):
            for end in range(start, n + 1):
                assert torch.equal(stored.read_flat(start, end), flat[start:end]), (key, start, end)
    with pytest.raises(ValueError):
        stored.read_flat(0, n + 1)
