"""The planner's per-GPU memory against real ZeRO-3 runs (2 and 4 gloo processes, SP 1 and 2).

Compared per rank (CPU, so host memory; see README "Planning a run"):
- model states: DeepSpeed's partitions after two steps vs ``per_gpu_gib.model_states``;
- step memory: peak RSS during two steps (after a warm-up step) minus the RSS before them vs
  ``activations + sp_buffers``;
- their sum, the headline, within 15%.
The DeepSpeed JSON is the fp32 one the CPU tests use; nothing else differs from what the CLI plans.
"""

from __future__ import annotations

import json
import os

import pytest

from megavg.plan.layouts import Request, plan
from tests.distributed.launch import torchrun

pytestmark = pytest.mark.distributed
GIB = 2**30


@pytest.mark.parametrize("nproc, sp", [(2, 1), (4, 2)])
def test_predicted_memory_matches_real_runs(tmp_path, monkeypatch, nproc, sp):
    # wan-tiny-t2v, 13 frames at 768 x 768 -> latents 4 x 96 x 96 -> 9,216 tokens (patch 2)
    req = Request(
        "wan-tiny-t2v", 1, nproc, 1000, (768, 768), 13, sp=sp,
        deepspeed=("configs/deepspeed/zero3_fp32.json",), checkpointing=(False,),
    )  # fmt: skip
    result = plan(req)
    mem = {k: v * GIB for k, v in result["per_gpu_gib"].items()}
    # freed tensors go back to the OS at once, so the peak RSS follows live memory
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    monkeypatch.setenv("PLAN_LATENTS", "[4, 4, 96, 96]")
    torchrun(REPO_WORKER, nproc, tmp_path, str(tmp_path / "m"), *result["overrides"], timeout=400)
    predicted_step = mem["activations"] + mem["sp_buffers"]
    for rank in range(nproc):
        measured = json.loads((tmp_path / f"m_rank{rank}.json").read_text())
        assert measured["model_states"] == pytest.approx(mem["model_states"], rel=0.02)
        assert measured["step_peak"] == pytest.approx(predicted_step, rel=0.15)
        total = measured["model_states"] + measured["step_peak"]
        assert total == pytest.approx(mem["model_states"] + predicted_step, rel=0.15)


REPO_WORKER = os.path.join(os.path.dirname(__file__), "plan_memory_worker.py")
