"""Worker for the planner's memory test: a real ZeRO-3 training run, what each rank holds.

``torchrun ... plan_memory_worker.py OUT_PREFIX section.key=value ...`` (training config overrides; latent
shape [C, T, H, W] in ``$PLAN_LATENTS`` for Wan tasks). Builds the task's model as the trainer does, wraps
it in DeepSpeed, and runs one warm-up and two measured optimizer steps on random data of the shapes the
planner assumes (512 text tokens). Per rank it reports, in bytes:

- ``model_states``: DeepSpeed's partitions after the steps (parameters, gradients, fp32 master, Adam moments);
- ``step_peak``: peak RSS during the two measured steps minus the RSS just before them (activations and the
  backward's working memory; run with glibc ``MALLOC_MMAP_THRESHOLD_`` low so freed tensors leave RSS).
"""

from __future__ import annotations

import gc
import json
import os
import sys

import torch


def batch_for(cfg, args, gen: torch.Generator) -> dict:
    b = cfg.data.batch_size
    if cfg.task.name == "dcaev_recon":
        return {"video": torch.rand(b, 3, cfg.data.frames, *cfg.data.size, generator=gen) * 2 - 1}
    shape = json.loads(os.environ["PLAN_LATENTS"])  # [C, T, H, W]
    text = torch.randn(b, 512, args.text_dim, generator=gen)
    return {"latents": torch.randn(b, *shape, generator=gen), "text": text}


def main() -> None:
    from megavg.parallel import state
    from megavg.tasks import build_task
    from megavg.tasks.base import StepContext, compute_dtype, model_args
    from megavg.train import engine as ds_engine
    from megavg.train.config import load_config
    from megavg.train.loop import micro_generator
    from megavg.utils.memory import peak_rss_mib, reset_peak_rss, rss_mib

    prefix, cfg = sys.argv[1], load_config(None, sys.argv[2:])
    task = build_task(cfg)
    ds_engine.init_distributed("gloo")
    state.initialize(cfg.parallel.sp_size)
    torch.manual_seed(0)
    model = task.build_model()
    params = [p for p in model.parameters() if p.requires_grad]
    sp_group = state.get_sequence_parallel_group() if cfg.parallel.sp_size > 1 else None
    if sp_group is not None:
        model = task.parallelize(model, sp_group)
    engine = ds_engine.initialize(cfg, model, params)
    dtype = compute_dtype(ds_engine.deepspeed_config(cfg))
    dp_rank = state.get_data_parallel_rank()
    batch = batch_for(cfg, model_args(cfg.model), torch.Generator().manual_seed(dp_rank))

    def step(i: int) -> None:
        ctx = StepContext(i, micro_generator(0, i, dp_rank), ds_engine.device(), dtype, sp_group)
        terms = task.loss(engine, batch, ctx)
        engine.backward(terms["loss"] * cfg.parallel.sp_size)
        engine.step()

    step(0)  # warm-up: Adam's moments, DeepSpeed's buckets and gloo's buffers are allocated once, here
    gc.collect()
    before = rss_mib()
    assert reset_peak_rss(), "needs Linux /proc/self/clear_refs"
    for i in (1, 2):
        step(i)
    result = {
        "model_states": ds_engine.partition_bytes(engine),
        "step_peak": (peak_rss_mib() - before) * 2**20,
    }
    with open(f"{prefix}_rank{os.environ['RANK']}.json", "w") as f:
        json.dump(result, f)
    state.shutdown()


if __name__ == "__main__":
    main()
