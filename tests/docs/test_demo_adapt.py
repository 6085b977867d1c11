"""``bash tools/demo.sh adapt`` (tools/demo_adapt.sh): pre-computation -> phases 1-3 under real 2-rank
``deepspeed`` launches -> merge -> export -> generate, in a checkout-like folder holding a 2-step run of
the first demo (as the README tour test does); then a rerun skips every stage.

The script is run directly with ``PY`` set, as ``demo.sh adapt`` runs it after its install check (that
check would reinstall into this temporary folder). ``ADAPT_DEMO_STEPS=2`` keeps it short."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from megavg.models import registry
from tests.docs.doc_commands import REPO
from tests.docs.test_docs_commands import _demo_run
from tests.infer.tiny_pipeline import read_video

NEW = {"patch_embed.weight", "patch_embed.bias", "head.linear.weight", "head.linear.bias"}


def changed(a, b) -> set[str]:
    a, b = registry.load_state_dict(a), registry.load_state_dict(b)
    return {k for k in a if not torch.equal(a[k], b[k])}


def adapt_demo(root) -> subprocess.CompletedProcess:
    env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin", "HOME": str(root),
           "PY": sys.executable, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "ADAPT_DEMO_STEPS": "2"}  # fmt: skip
    proc = subprocess.run(["bash", "tools/demo_adapt.sh"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=1500)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.distributed
def test_adapt_demo_runs_every_stage_then_skips_them(tmp_path):
    for name in ("tools", "tests", "configs", "megavg", ".venv"):
        (tmp_path / name).symlink_to(REPO / name)
    _demo_run(tmp_path)
    first = adapt_demo(tmp_path)
    d = tmp_path / "runs/adapt_demo"
    assert [line for line in first.stdout.splitlines() if line.startswith("== adapt demo:")] == [
        f"== adapt demo: {name} ({config}, 2 steps, 2 processes)"
        for name, config in (("align", "adapt_1_align"), ("head", "adapt_2_head"), ("lora", "adapt_3_lora"))
    ]
    for part in ("part-00000", "part-00001"):  # one latent set per rank, 2 shards each
        assert len(list((d / "latents" / part).glob("*.tar"))) == 2
    for phase in ("align", "head", "lora"):
        assert (d / phase / "checkpoints/latest").read_text().strip() == "step_00000002"
    assert changed(d / "student0", d / "align-model") == {"patch_embed.weight", "patch_embed.bias"}
    assert changed(d / "align-model", d / "head-model") == NEW
    merged = changed(d / "head-model", d / "lora-model") - NEW
    assert merged and all(".self_attn." in k or ".ffn." in k or "time_embed" in k for k in merged), merged
    video = read_video(d / "fox.mp4")
    assert video.shape == (16, 64, 64, 3) and video.std() > 0

    stamp = (d / "fox.mp4").stat().st_mtime_ns
    again = adapt_demo(tmp_path)  # everything done: no stage reruns, no DeepSpeed launch
    assert "== adapt demo:" not in again.stdout and "DeepSpeed initialize" not in again.stderr
    assert (d / "fox.mp4").stat().st_mtime_ns == stamp
