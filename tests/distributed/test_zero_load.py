"""Sliced loading under ZeRO-3 (2 gloo processes, fp32): the gathered weights equal a plain full load of
``model.init`` (plain init, the student made from a base, LoRA on top), and each rank reads from the
safetensors files about its 1/N share of every tensor, not whole tensors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model

import megavg.models
from megavg.models import registry
from megavg.models.wan.student import make_student
from megavg.tasks.adapt_align import TEACHER_KEYS
from megavg.tasks.adapt_lora import lora_targets
from tests.distributed.launch import REPO, torchrun

WORKER = REPO / "tests/distributed/zero_load_worker.py"
RANKS = 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero_load")
    torch.manual_seed(1)
    megavg.models.build("wan-tiny-t2v").save(tmp / "base")
    cmd = [sys.executable, "tools/make_student.py", "--base", str(tmp / "base"), "--out",
           str(tmp / "student"), "--in-channels", "8", "--out-channels", "8", "--seed", "3"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp


def read_bound(state: dict[str, torch.Tensor]) -> int:
    """Elements one rank may read: its ceil(numel / N) share of each tensor plus the two partial rows
    (along the first dimension that is not 1) at the ends of its range."""
    total = 0
    for tensor in state.values():
        shape = [s for s in tensor.shape]
        while shape and shape[0] == 1:
            shape.pop(0)
        row = torch.Size(shape[1:]).numel() if shape else 1
        total += -(-tensor.numel() // RANKS) + 2 * row
    return total


def student_reference(folder) -> dict[str, torch.Tensor]:
    """The student in memory the old way: the whole base loaded, :func:`make_student` (seed as the tool)."""
    base = registry.load(folder / "base")
    torch.manual_seed(3)
    return make_student(base, 8, 8).state_dict()


def lora_reference(folder) -> dict[str, torch.Tensor]:
    """Plain build (no ZeRO) + full load + one peft injection over every target, same seed."""
    torch.manual_seed(0)
    model = registry.build(registry.read_config(folder / "student"))
    model.load_state_dict(registry.load_state_dict(folder / "student"))
    targets = lora_targets(model, ["cross_attn", "text_embed", "head"])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)
    return inject_adapter_in_model(config, model).state_dict()


@pytest.fixture(scope="module")
def runs(folders, tmp_path_factory):
    """One 2-rank launch building every case (and the resume run): its output folder."""
    out = tmp_path_factory.mktemp("zero_load_out")
    base, student = folders / "base", folders / "student"
    cases = {
        "plain": [f"model.init={base}"],
        "student": ["task.name=adapt_align", f"model.init={student}", f"task.args.teacher={base}"],
        "lora": ["task.name=adapt_lora", f"model.init={student}", "task.args.rank=4", "task.args.alpha=8"],
        "resume": [f"model.init={base}", "model.trainable=[patch_embed.*,head.linear.*]", "schedule.steps=2",
                   f"run.dir={out / 'run'}", "logging.tensorboard=false", "checkpoint.exclude_frozen=true"],
    }  # fmt: skip
    torchrun(WORKER, RANKS, out, *[arg for name, case in cases.items() for arg in ("--", name, *case)])
    return out


def results(runs, name):
    return [torch.load(runs / f"{name}_rank{r}.pt", weights_only=True) for r in range(RANKS)]


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["plain", "student", "lora"])
def test_sliced_load_equals_full_load_and_reads_one_share(folders, runs, name):
    base, student = folders / "base", folders / "student"
    expected = {"plain": registry.load_state_dict, "student": student_reference, "lora": lora_reference}
    want = expected[name](base if name == "plain" else folders)
    stored = registry.load_state_dict(base if name == "plain" else student)
    bound = read_bound(stored)
    if name == "student":  # the alignment task also reads the teacher's embedder, whole, on every rank
        bound += sum(t.numel() for t in registry.load_state_dict(base, list(TEACHER_KEYS)).values())
    got = results(runs, name)
    assert got[0]["whole"] == []  # LoRA adapters too are partitioned before the model is handed over
    assert got[0]["state"].keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[0]["state"][key], want[key], rtol=0, atol=0, msg=key)
    reads = [r["read"] for r in got]
    assert sum(reads) >= sum(t.numel() for t in stored.values()), reads  # every element read somewhere
    assert max(reads) <= bound, (reads, bound)


@pytest.mark.distributed
def test_frozen_weights_left_out_of_checkpoints_come_back_on_resume(folders, runs):
    init = registry.load_state_dict(folders / "base")
    run = results(runs, "resume")[0]
    trained, resumed = run["trained"], run["resumed"]
    trainable = {k for k in init if k.startswith(("patch_embed.", "head.linear."))}
    assert all(not torch.equal(trained[k], init[k]) for k in trainable)  # the first run did train them
    for key in init:
        want = trained[key] if key in trainable else init[key]
        torch.testing.assert_close(resumed[key], want, rtol=0, atol=0, msg=key)
    saved = torch.load(next((runs / "run/checkpoints").glob("step_*/*model_states.pt")), weights_only=False)
    assert not any("blocks.0.ffn" in k for k in saved.get("param_shapes", [{}])[0]), "frozen weights saved"
