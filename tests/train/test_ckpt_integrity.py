"""Checkpoint manifests and the choice of the tag to resume from, on fabricated tags (one process)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from megavg.layers.config import Fp8Config
from megavg.train import ckpt_integrity as ci
from megavg.train.checkpoint import Checkpointer, choose_tag, read_latest, tag_of
from megavg.utils.errors import UserError

STATES = ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]


def fake_tag(ckpt, step: int, seal: bool = True):
    """A tag folder with DeepSpeed-like file names and random contents; sealed with a manifest."""
    tag = ckpt / tag_of(step)
    (tag / "rng").mkdir(parents=True)
    for i, name in enumerate([*STATES, "rng/rank_00000.pt", "config.yaml"]):
        (tag / name).write_bytes(bytes([step, i]) * 500)
    (tag / ".config.yaml.tmp-1234").write_text("temporary of an atomic write: not listed")
    if seal:
        names = ci.tag_files(tag)
        ci.write_manifest(tag, ci.describe(tag, names), world_size=1)
    return tag


@pytest.fixture
def world_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def warnings_seen():
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("megavg").addHandler(handler)
    yield seen
    logging.getLogger("megavg").removeHandler(handler)


def test_manifest_lists_every_file_with_size_and_hash(tmp_path):
    tag = fake_tag(tmp_path, 4)
    body = json.loads((tag / ci.MANIFEST).read_text())
    assert sorted(body["files"]) == sorted([*STATES, "config.yaml", "rng/rank_00000.pt"])
    assert body["files"]["config.yaml"]["size"] == 1000
    assert ci.problems(tag) == []
    # the split over ranks covers every file exactly once
    names = sorted(body["files"])
    assert sorted(n for r in range(3) for n in ci.share(names, r, 3)) == names


def damage(tag, how: str) -> str:
    """Damage ``tag`` one way; returns the file a message must name."""
    target = tag / STATES[1]
    if how == "truncated":
        target.write_bytes(target.read_bytes()[:100])
    elif how == "garbled":  # same size, different bytes: only the hash sees it
        data = bytearray(target.read_bytes())
        data[500] ^= 0xFF
        target.write_bytes(bytes(data))
    elif how == "missing":
        target.unlink()
    elif how == "missing_rng":
        target = tag / "rng/rank_00000.pt"
        target.unlink()
    elif how == "bad_manifest":
        target = tag / ci.MANIFEST
        target.write_text("{not json")
    return target.name


@pytest.mark.parametrize("how", ["truncated", "garbled", "missing", "missing_rng", "bad_manifest"])
def test_damage_is_found_and_names_the_file(tmp_path, how):
    tag = fake_tag(tmp_path, 4)
    name = damage(tag, how)
    found = ci.problems(tag)
    assert found and name in found[0], found
    with pytest.raises(UserError, match=name):
        ci.verify(tag)


def test_hashes_are_split_over_ranks(tmp_path):
    tag = fake_tag(tmp_path, 4)
    damage(tag, "garbled")
    names = sorted(json.loads((tag / ci.MANIFEST).read_text())["files"])
    owner = names.index(STATES[1]) % 2
    assert ci.problems(tag, owner, 2) and not ci.problems(tag, 1 - owner, 2)


def test_legacy_tags_are_checked_for_structure(tmp_path):
    tag = fake_tag(tmp_path, 4, seal=False)
    assert ci.problems(tag) == []
    (tag / STATES[0]).unlink()
    assert "zero_pp_rank_0_mp_rank_00_model_states.pt: missing" in ci.problems(tag)[0]
    (tag / "config.yaml").unlink()
    assert any("config.yaml: missing" in p for p in ci.problems(tag))


@pytest.mark.parametrize(
    ("text", "message"),
    [(b"\xff\xfe garbage", "is not a checkpoint tag"), (b"step_00000009\n", "not a checkpoint folder")],
)
def test_latest_that_names_no_tag_is_a_user_error(tmp_path, text, message):
    fake_tag(tmp_path, 4)
    (tmp_path / "latest").write_bytes(text)
    with pytest.raises(UserError, match=f"latest: .*{message}"):
        read_latest(tmp_path)


@pytest.mark.parametrize("how", ["truncated", "garbled", "missing", "missing_rng", "bad_manifest", "latest"])
def test_resume_skips_a_damaged_newest_tag_with_one_warning(tmp_path, world_of_one, warnings_seen, how):
    for step in (2, 4):
        fake_tag(tmp_path, step)
    (tmp_path / "latest").write_text(tag_of(4))
    if how == "latest":
        (tmp_path / "latest").write_text("\x00garbage")
    else:
        damage(tmp_path / tag_of(4), how)
    want = tag_of(4) if how == "latest" else tag_of(2)  # garbage `latest`: the newest sealed tag is intact
    assert choose_tag(tmp_path) == want
    assert len(warnings_seen) == 1 and f"resuming from {want}" in warnings_seen[0], warnings_seen


def test_resume_choice_of_complete_and_partial_tags(tmp_path, world_of_one, warnings_seen):
    assert choose_tag(tmp_path) is None  # nothing saved yet
    fake_tag(tmp_path, 2, seal=False)  # a legacy tag named by `latest`: resumable
    (tmp_path / "latest").write_text(tag_of(2))
    fake_tag(tmp_path, 4, seal=False)  # newer than `latest`, not sealed: a save that crashed
    assert choose_tag(tmp_path) == tag_of(2)
    fake_tag(tmp_path, 6)  # sealed but `latest` not moved yet (crash just before): complete
    assert choose_tag(tmp_path) == tag_of(6)
    assert warnings_seen == []
    damage(tmp_path / tag_of(6), "garbled")
    damage(tmp_path / tag_of(2), "missing")
    with pytest.raises(UserError, match="no intact checkpoint to resume from"):
        choose_tag(tmp_path)


class FakeEngine:
    """The two DeepSpeed engine calls the checkpointer makes, as DeepSpeed 0.19.8 does them for one rank:
    the module state in ``*_model_states.pt`` and, on load, ``custom_load_fn(src=..., dst=module)`` when
    given, else ``module.load_state_dict(src, strict=load_module_strict)``."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def save_checkpoint(self, save_dir, tag, client_state, save_latest, exclude_frozen_parameters):
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"module": self.module.state_dict(), **client_state}, folder / STATES[0])
        torch.save({"optimizer_state_dict": {}}, folder / STATES[1])

    def load_checkpoint(self, load_dir, tag, load_module_strict, custom_load_fn=None, **_):
        saved = torch.load(Path(load_dir) / tag / STATES[0], weights_only=False)
        if custom_load_fn:
            custom_load_fn(src=saved["module"], dst=self.module)
        else:
            self.module.load_state_dict(saved["module"], strict=load_module_strict)
        return str(Path(load_dir) / tag), {"step": saved["step"]}


class Fp8Like(torch.nn.Module):
    """A layer with FP8 scaling state in ``_extra_state`` (as TE's modules keep their amax history)."""

    def __init__(self, fp8: Fp8Config) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.amax = torch.zeros(4)
        self.args = SimpleNamespace(layers=SimpleNamespace(fp8=fp8))

    def get_extra_state(self):
        return self.amax.clone()

    def set_extra_state(self, state) -> None:
        self.amax = state.clone()


KEEP = Fp8Config(
    enabled=True, recipe="delayed", reset_amax_on_load=False, bf16_first_blocks=0, bf16_last_blocks=0
)


@pytest.mark.parametrize(
    ("fp8", "restored"), [(Fp8Config(enabled=True), False), (KEEP, True)], ids=["reset", "keep"]
)
def test_resume_resets_or_keeps_fp8_scaling_state(tmp_path, world_of_one, fp8, restored):
    model = Fp8Like(fp8)
    model.amax = torch.tensor([1.0, 2.0, 3.0, 4.0])
    ckpt = Checkpointer(tmp_path, keep=2, exclude_frozen=False)
    ckpt.save(FakeEngine(model), 3, "run: {}\n")
    assert ci.problems(tmp_path / "checkpoints" / tag_of(3)) == []  # sealed
    fresh = Fp8Like(fp8)
    assert ckpt.load(FakeEngine(fresh)) == 3
    assert torch.equal(fresh.lin.weight, model.lin.weight)
    assert torch.equal(fresh.amax, model.amax if restored else torch.zeros(4))


def test_resume_restores_the_global_rng(tmp_path, world_of_one):
    """Whatever a task draws from torch's or Python's global RNG after a resume equals what it drew after
    the save."""
    ckpt = Checkpointer(tmp_path, keep=2, exclude_frozen=False)
    ckpt.save(FakeEngine(torch.nn.Linear(2, 2)), 1, "run: {}\n")
    after_save = (torch.rand(3), random.random())
    torch.manual_seed(99)
    random.seed(99)
    ckpt.load(FakeEngine(torch.nn.Linear(2, 2)))
    after_load = (torch.rand(3), random.random())
    assert torch.equal(after_save[0], after_load[0]) and after_save[1] == after_load[1]
