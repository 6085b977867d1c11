"""LoRA merge of consolidation: W + (alpha/r) * B @ A computed independently, whatever the checkpoint
holds (``checkpoint.exclude_frozen=false`` keeps the frozen ``base_layer.weight``), one weight at a time."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megavg.models import registry
from megavg.tasks.adapt_lora import merge_lora
from megavg.utils.lazy import materialize

SCALE = 8 / 4  # alpha / r


def lora_case():
    g = torch.Generator().manual_seed(0)
    base = {"q.weight": torch.randn(6, 5, generator=g), "q.bias": torch.randn(6, generator=g),
            "o.weight": torch.randn(6, 6, generator=g), "norm.weight": torch.ones(6)}  # fmt: skip
    adapters = {"q": (torch.randn(4, 5, generator=g), torch.randn(6, 4, generator=g)),
                "o": (torch.randn(4, 6, generator=g), torch.randn(6, 4, generator=g))}  # fmt: skip
    expected = dict(base)
    for name, (down, up) in adapters.items():  # plain fp64 reference: W + s * B @ A
        expected[f"{name}.weight"] = (
            base[f"{name}.weight"].double() + SCALE * up.double() @ down.double()
        ).float()
    return base, adapters, expected


def trained_state(base, adapters, frozen_first: bool | None):
    """What consolidation reads: the adapters, and the frozen base layers (before or after) if kept."""
    lora = {}
    for name, (down, up) in adapters.items():
        lora[f"{name}.lora_A.default.weight"] = down
        lora[f"{name}.lora_B.default.weight"] = up
    frozen = {f"{n}.base_layer.weight": base[f"{n}.weight"].clone() for n in adapters}
    frozen["q.base_layer.bias"] = base["q.bias"].clone()
    if frozen_first is None:
        return lora
    return {**frozen, **lora} if frozen_first else {**lora, **frozen}


@pytest.mark.parametrize(
    "frozen_first", [None, True, False], ids=["exclude_frozen", "frozen_first", "frozen_last"]
)
def test_merged_weights_are_w_plus_scaled_ba(frozen_first):
    base, adapters, expected = lora_case()
    merged = merge_lora(base, trained_state(base, adapters, frozen_first), SCALE)
    assert set(merged) == set(base)
    for key, value in merged.items():
        torch.testing.assert_close(materialize(value), expected[key], rtol=1e-6, atol=1e-6)


@dataclasses.dataclass
class Probe:
    """A lazy tensor that counts its materialisations."""

    tensor: torch.Tensor
    log: list

    @property
    def shape(self):
        return self.tensor.shape

    @property
    def dtype(self):
        return self.tensor.dtype

    def contiguous(self):
        self.log.append(self.tensor.numel())
        return self.tensor


def test_merge_computes_nothing_and_the_writer_merges_one_weight_at_a_time(tmp_path, monkeypatch):
    base, adapters, expected = lora_case()
    log: list[int] = []
    lazy_base = {k: Probe(v, log) for k, v in base.items()}
    trained = {k: Probe(v, log) for k, v in trained_state(base, adapters, frozen_first=False).items()}
    merged = merge_lora(lazy_base, trained, SCALE)
    assert log == []  # nothing materialised by the merge itself
    per_shard = []
    save = registry.save_file

    def save_file(shard, *args, **kwargs):
        per_shard.append(len(log))  # tensors materialised for this shard
        log.clear()
        save(shard, *args, **kwargs)

    monkeypatch.setattr(registry, "save_file", save_file)
    registry.write_safetensors(merged, tmp_path, "model", max_bytes=1)  # one tensor a shard
    assert len(per_shard) == len(base)
    assert max(per_shard) <= 3  # one merged weight: W, A and B, never the next weight's
    written = registry.load_state_dict(tmp_path)
    for key in base:
        torch.testing.assert_close(written[key], expected[key], rtol=1e-6, atol=1e-6)
