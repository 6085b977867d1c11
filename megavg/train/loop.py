"""The training loop: build -> DeepSpeed -> resume -> steps (loss, backward, step, metrics, checkpoints).

Exit codes (returned by :func:`train`): 0 = all ``schedule.steps`` done; 75 = stopped by SIGUSR1/SIGTERM
after writing a complete checkpoint (a launcher requeues the job; rerunning resumes).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megavg.parallel import state
from megavg.tasks.base import StepContext, Task, compute_dtype, set_trainable, unwrap
from megavg.train import ema as ema_mod
from megavg.train import engine as ds_engine
from megavg.train.checkpoint import Checkpointer
from megavg.train.config import TrainConfig, dump_config
from megavg.train.flops import StepFlops, peak_tflops
from megavg.train.metrics import MetricsWriter, peak_memory_gib
from megavg.train.signals import StopFlag
from megavg.utils.io import atomic_file
from megavg.utils.logging import get_logger

log = get_logger(__name__)
EXIT_PREEMPTED = 75


def make_loader(cfg: TrainConfig, dp_rank: int, dp_size: int, start_batch: int) -> Iterable[dict]:
    """Infinite batches for one data-parallel rank, resuming after ``start_batch`` micro-batches."""
    from megavg.data import build_loader

    return build_loader(cfg.data, dp_rank, dp_size, cfg.schedule.seed, start_step=start_batch)


def micro_generator(seed: int, micro_index: int, dp_rank: int) -> torch.Generator:
    """Noise/timestep generator of one micro-batch: equal on all SP ranks of a DP rank, else distinct."""
    (value,) = np.random.SeedSequence([seed, micro_index, dp_rank]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(value))


def _all_finite(finite: torch.Tensor) -> bool:
    """Whether ``finite`` (a bool tensor) holds on every rank: one all-reduce, one host sync."""
    flag = finite.float().reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _phase_logger(enabled: bool):
    """``phase(text)``: one INFO line per start-up phase on rank 0, with the seconds the previous took."""
    last = [time.perf_counter()]

    def phase(text: str) -> None:
        now = time.perf_counter()
        if enabled:
            log.info("%s (previous phase %.1f s)", text, now - last[0])
        last[0] = now

    return phase


def _mean_over_ranks(values: dict[str, torch.Tensor], device: torch.device) -> dict[str, float]:
    """Average of scalar tensors over all ranks: one all-reduce and one host sync for all of them."""
    names = sorted(values)
    packed = torch.stack([values[n].detach().to(device, torch.float64).reshape(()) for n in names])
    dist.all_reduce(packed)
    return dict(zip(names, (packed / dist.get_world_size()).tolist()))


class Trainer:
    """Holds the engine, task, data and bookkeeping of one run (built by :func:`train`)."""

    def __init__(self, cfg: TrainConfig, task: Task) -> None:
        self.cfg, self.task = cfg, task
        self.run_dir = Path(cfg.run.dir)
        self.ds_config = ds_engine.deepspeed_config(cfg)
        self.dtype = compute_dtype(self.ds_config)
        self.device = ds_engine.device()
        self.dp_rank = state.get_data_parallel_rank()
        self.dp_size = state.get_data_parallel_world_size()
        self.sp_group = state.get_sequence_parallel_group() if cfg.parallel.sp_size > 1 else None
        rank0 = dist.get_rank() == 0
        phase = _phase_logger(rank0)
        torch.manual_seed(cfg.schedule.seed)  # same initial weights on every rank
        task.init_context = lambda: ds_engine.zero_init(cfg, self.ds_config)
        phase("building the model")
        model = task.build_model()
        if cfg.parallel.sp_size > 1:
            model = task.parallelize(model, self.sp_group)
        params = set_trainable(model, cfg.model.trainable)
        numel = sum(getattr(p, "ds_numel", p.numel()) for p in params)  # ZeRO-3 Init: p.numel() is 0
        phase(f"DeepSpeed initialize ({numel:,} trainable parameters)")
        self.engine = ds_engine.initialize(cfg, model, params)
        self.aux_engines = task.setup(self.ds_config, self.device)  # e.g. a GAN discriminator
        self.checkpointer = Checkpointer(self.run_dir, cfg.checkpoint.keep, cfg.checkpoint.exclude_frozen)
        phase(f"looking for a checkpoint in {self.run_dir / 'checkpoints'}")
        self.step = self.checkpointer.load(self.engine, self.aux_engines)
        phase(f"starting at step {self.step} of {cfg.schedule.steps}; data: {cfg.data.shards}")
        self.ema = ema_mod.build(cfg.model.ema, self.engine, self.step)
        self.loader = make_loader(cfg, self.dp_rank, self.dp_size, self.step * cfg.schedule.grad_accum)
        self.batches = iter(self.loader)
        self.flops = StepFlops(cfg, task)
        self.peak_tflops = peak_tflops(cfg, self.device)
        self.metrics = MetricsWriter(self.run_dir, rank0, cfg.logging.tensorboard, self.step)
        self.validator = None
        if cfg.validation.enabled:
            from megavg.train.validation import Validator

            self.validator = Validator(cfg, unwrap(self.engine), self.device)
        if rank0:
            with atomic_file(self.run_dir / "config.yaml") as tmp:
                tmp.write_text(dump_config(cfg))

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the loss terms averaged over the
        micro-batches as device tensors (local to this rank; nothing is copied to the host here).

        Host syncs: one, the finiteness all-reduce before the update (DeepSpeed applies it in the last
        micro-batch's ``engine.step()``); a NaN/Inf loss in any micro-batch of any rank stops the run
        before that update."""
        ga = self.cfg.schedule.grad_accum
        sums: dict[str, torch.Tensor] = {}
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        tokens, flops_sum = 0, None
        for micro in range(ga):
            batch = next(self.batches)
            gen = micro_generator(self.cfg.schedule.seed, self.step * ga + micro, self.dp_rank)
            ctx = StepContext(self.step, gen, self.device, self.dtype, self.sp_group)
            terms = self.task.loss(self.engine, batch, ctx)
            finite = finite & torch.isfinite(terms["loss"].detach()).all()
            # DeepSpeed averages over DP x SP ranks; SP ranks hold partial (SP-sum) gradients.
            self.engine.backward(terms["loss"] * self.cfg.parallel.sp_size)
            if micro == ga - 1 and not _all_finite(finite):
                log.error(f"step {self.step + 1}: loss is NaN or Inf; stopping without a checkpoint")
                raise SystemExit(1)
            self.engine.step()
            tokens += self.task.tokens(batch)
            flops = self.flops(batch)
            flops_sum = None if flops is None else (flops_sum or 0) + flops
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float() / ga
        sums["tokens"] = torch.tensor(float(tokens), device=self.device)
        if flops_sum is not None:
            sums["flops"] = torch.tensor(float(flops_sum), device=self.device)
        return sums

    def log_step(self, terms: dict[str, torch.Tensor], seconds: float) -> None:
        """Reduce this step's terms over ranks (the only host sync of the loss) and write the metrics."""
        skipped = torch.tensor(float(getattr(self.loader, "skipped", 0)), device=self.device)
        mean = _mean_over_ranks({**terms, "skipped": skipped}, self.device)
        # SP ranks repeat their DP rank's sample: per-sample quantities count once per SP group.
        sp = self.cfg.parallel.sp_size
        tokens = mean.pop("tokens") * dist.get_world_size() / sp
        skipped = mean.pop("skipped") * dist.get_world_size() / sp
        flops = mean.pop("flops", None)  # model FLOPs of one GPU's share of the step, averaged over GPUs
        peak = torch.tensor([peak_memory_gib()], device=self.device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        samples = self.cfg.data.batch_size * self.cfg.schedule.grad_accum * self.dp_size
        scalars = {"train/loss": mean.pop("loss")} | {f"train/{k}": v for k, v in mean.items()}
        scalars |= {
            "train/lr": float(self.engine.get_lr()[0]),
            "train/grad_norm": float(self.engine.get_global_grad_norm() or 0.0),
            "perf/step_time_s": seconds,
            "perf/samples_per_s": samples / seconds,
            "perf/tokens_per_s": tokens / seconds,
            "perf/peak_memory_gib": float(peak.item()),
            "data/skipped_samples": skipped,
        }
        if flops is not None:
            scalars["perf/tflops_per_gpu"] = flops / seconds / 1e12
            if self.peak_tflops:
                scalars["perf/mfu"] = scalars["perf/tflops_per_gpu"] / self.peak_tflops
        if self.ema is not None:
            scalars["train/ema_decay"] = self.ema.last_decay
        self.metrics.log(self.step, scalars)

    def save(self) -> None:
        self.checkpointer.save(self.engine, self.step, dump_config(self.cfg), self.aux_engines)

    def run(self, stop: StopFlag) -> int:
        """Train to ``schedule.steps``; returns the exit code (0 done, 75 preempted)."""
        cfg = self.cfg
        saved_at = first = self.step
        while self.step < cfg.schedule.steps:
            start = time.perf_counter()
            terms = self.train_step()
            self.step += 1
            if self.step == first + 1 and dist.get_rank() == 0:
                log.info("first step done (%.1f s)", time.perf_counter() - start)
            if self.ema is not None:
                self.ema.update(self.step)
            if self.step % cfg.logging.every == 0 or self.step == cfg.schedule.steps:
                self.log_step(terms, time.perf_counter() - start)
            self.task.on_step_end(self.engine, self.step, self.metrics)
            preempted = stop.agreed()
            if preempted or (cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0):
                self.save()
                saved_at = self.step
            if preempted:
                log.info(f"stop signal: checkpoint at step {self.step} written, exiting {EXIT_PREEMPTED}")
                return EXIT_PREEMPTED
            if self.validator is not None and self.validator.due(self.step, self.step == cfg.schedule.steps):
                self.validator.run(self.engine, self.step, self.metrics)
        if saved_at != self.step:
            self.save()
        return 0

    def close(self) -> None:
        self.metrics.close()


def train(cfg: TrainConfig, task: Task) -> int:
    """Run training under the current launcher (deepspeed / torchrun / single process)."""
    stop = StopFlag().install()
    ds_engine.init_distributed(cfg.parallel.backend)
    state.initialize(cfg.parallel.sp_size)
    trainer = Trainer(cfg, task)
    try:
        code = trainer.run(stop)
    finally:
        trainer.close()
    dist.barrier()
    state.shutdown()
    return code
