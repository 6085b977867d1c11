"""Worker for the engine tests: ``python -m megavg.train`` with test hooks chosen by environment variables.

Run under ``torchrun`` or ``deepspeed`` exactly like the entry point (same arguments). Hooks:

- ``MEGAVG_TEST_SYNTHETIC=1``: the data loader yields :func:`synthetic_batch` slices (global batch of
  micro-batch ``i`` cut by data-parallel rank), so a single-process reference can rebuild the same data.
- ``MEGAVG_TEST_NAN_AT=k``: micro-batch ``k`` of data-parallel rank 0 is all NaN.
- ``MEGAVG_TEST_STRICT_DEVICES=1``: the task's loss, the logging reductions and the stop-flag vote run
  under the device-strict collective check (:mod:`megavg.parallel.device_check`): a tensor made without
  ``device=`` that reaches a collective fails the run, as NCCL would.
- ``MEGAVG_TEST_LOG_SHAPES=1``: each rank appends {"step", "shape" (latents), "key"} of every micro-batch
  it takes to ``$MEGAVG_TEST_OUT/shapes_rank<R>.jsonl``.
- ``MEGAVG_TEST_BLOCK_AT=k``: fetching micro-batch ``k`` waits until ``$MEGAVG_TEST_OUT/release`` exists
  (forever when it never appears): the test then kills or signals a rank at a known step.

Each rank writes its pid to ``$MEGAVG_TEST_OUT/pid_rank<R>``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch


def synthetic_batch(micro_index: int, global_batch: int, kind: str, shape: tuple[int, ...]) -> dict:
    """The global batch of micro-batch ``micro_index``: video in [-1, 1] or latents + text."""
    gen = torch.Generator().manual_seed(1000 + micro_index)
    if kind == "video":
        return {"video": torch.rand((global_batch, *shape), generator=gen) * 2 - 1}
    latents = torch.randn((global_batch, *shape), generator=gen)
    return {"latents": latents, "text": torch.randn((global_batch, 6, 32), generator=gen)}


def _synthetic_loader(cfg, dp_rank: int, dp_size: int, start_batch: int):
    b = cfg.data.batch_size
    kind = "video" if cfg.task.name == "dcaev_recon" else "latent"
    shape = (3, cfg.data.frames, *cfg.data.size) if kind == "video" else (4, 2, *cfg.data.size)
    i = start_batch
    while True:
        full = synthetic_batch(i, b * dp_size, kind, shape)
        yield {k: v[dp_rank * b : (dp_rank + 1) * b] for k, v in full.items()}
        i += 1


def _hooked(batches, start_batch: int, dp_rank: int, out: Path):
    block_at = int(os.environ.get("MEGAVG_TEST_BLOCK_AT", -1))
    nan_at = int(os.environ.get("MEGAVG_TEST_NAN_AT", -1))
    shapes = out / f"shapes_rank{os.environ.get('RANK', '0')}.jsonl"
    for i, batch in enumerate(batches, start=start_batch):
        if os.environ.get("MEGAVG_TEST_LOG_SHAPES"):
            record = {"step": i, "shape": list(batch["latents"].shape), "key": batch.get("key")}
            with open(shapes, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        while i == block_at and not (out / "release").exists():
            time.sleep(0.05)
        if i == nan_at and dp_rank == 0:
            batch = {k: torch.full_like(v, float("nan")) for k, v in batch.items()}
        yield batch


def install_hooks() -> None:
    from megavg.train import loop

    out = Path(os.environ["MEGAVG_TEST_OUT"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pid_rank{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    synthetic = bool(os.environ.get("MEGAVG_TEST_SYNTHETIC"))
    make = _synthetic_loader if synthetic else loop.make_loader
    if synthetic:  # no shard is read: the pre-flight's shard count does not apply to this run
        import megavg.train.__main__ as entry

        entry.check_shards = lambda cfg, dp_size: None

    def make_loader(cfg, dp_rank, dp_size, start_batch):
        return _hooked(iter(make(cfg, dp_rank, dp_size, start_batch)), start_batch, dp_rank, out)

    loop.make_loader = make_loader
    if os.environ.get("MEGAVG_TEST_STRICT_DEVICES"):
        _strict_devices()


def _strict_devices() -> None:
    """The task's loss (forward, SP collectives), the logging reductions and the stop-flag vote under the
    check; data loading and DeepSpeed's backward/step stay outside (host data is CPU by design, and
    DeepSpeed places its own tensors through its accelerator)."""
    from megavg.parallel.device_check import strict_collectives
    from megavg.train import loop
    from megavg.train.signals import StopFlag

    def strict(method):
        def checked(self, *args, **kwargs):
            with strict_collectives(getattr(self, "device", torch.device("cpu"))):
                return method(self, *args, **kwargs)

        return checked

    def strict_loss(loss):
        def checked(engine, batch, ctx):
            with strict_collectives(ctx.device):
                return loss(engine, batch, ctx)

        return checked

    init = loop.Trainer.__init__

    def init_then_wrap(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.task.loss = strict_loss(self.task.loss)

    loop.Trainer.__init__ = init_then_wrap
    for cls, name in ((loop.Trainer, "log_step"), (StopFlag, "agreed")):
        setattr(cls, name, strict(getattr(cls, name)))


if __name__ == "__main__":
    from megavg.train.__main__ import main
    from megavg.utils.errors import run_cli

    install_hooks()
    run_cli(main)
