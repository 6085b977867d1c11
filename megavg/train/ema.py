"""EMA of the trainable weights, sharded like the ZeRO-3 fp32 master partitions (``model.ema``).

DeepSpeed's stage-3 optimizer keeps, per sub-group ``i``, the flat fp32 tensor
``fp32_partitioned_groups_flat[i]``: this rank's chunk of every trainable parameter of the sub-group,
concatenated. The EMA is one tensor of the same shape and device per sub-group (1/N of the trainable fp32
weights per rank, never a full copy), updated in place after each applied optimizer step:

    ema = decay * ema + (1 - decay) * master          (decay from :func:`decay_at`)

It lives in the torch optimizer's state of that flat tensor under the key ``"ema"``, next to AdamW's
``exp_avg`` / ``exp_avg_sq`` (added once the optimizer has created that state: AdamW initialises a
param's state only when it finds it empty). So DeepSpeed writes it into every ``*_optim_states.pt`` and
reads it back on a same-world-size resume, the checkpoint reader (:mod:`megavg.train.zero_checkpoint`,
key ``"ema"``) reassembles it per tensor for export, and an elastic resume re-partitions it like the
Adam moments.
"""

from __future__ import annotations

import torch

from megavg.train.config import EmaConfig
from megavg.utils.logging import get_logger

log = get_logger(__name__)
EMA_KEY = "ema"


def decay_at(cfg: EmaConfig, step: int) -> float:
    """The decay applied after optimizer step ``step`` (1-based): 0 (copy the weights) up to and including
    ``start_step``, ``cfg.decay`` every ``every``-th step after it, 1 (unchanged) on the steps between."""
    if step <= cfg.start_step:
        return 0.0
    if (step - cfg.start_step) % cfg.every:
        return 1.0
    return cfg.decay


def discard(engine) -> bool:
    """Remove an EMA restored from a checkpoint into ``engine``'s optimizer state (``model.ema`` off);
    returns whether there was one."""
    opt = engine.optimizer
    found = False
    for master in getattr(opt, "fp32_partitioned_groups_flat", []):
        found |= opt.optimizer.state.get(master, {}).pop(EMA_KEY, None) is not None
    return found


class ShardedEma:
    """The EMA of ``engine``'s trainable weights; build it after the checkpoint is loaded (it takes the
    restored EMA, else starts from the current weights)."""

    def __init__(self, cfg: EmaConfig, engine) -> None:
        self.cfg = cfg
        self.engine = engine
        opt = engine.optimizer  # stage 3 in memory: checked before launch (engine.deepspeed_config)
        if not hasattr(opt, "fp32_partitioned_groups_flat") or getattr(opt, "swap_optimizer", False):
            raise RuntimeError("model.ema needs the ZeRO stage-3 optimizer without NVMe offload")
        self.masters: list[torch.Tensor] = list(opt.fp32_partitioned_groups_flat)
        self.state = opt.optimizer.state
        saved = [self.state.get(m, {}).get(EMA_KEY) for m in self.masters]
        self.restored = all(e is not None for e in saved)
        if any(e is not None for e in saved) and not self.restored:
            raise RuntimeError("EMA state found for some optimizer sub-groups but not all")
        # one flat fp32 tensor per sub-group, same shape and device as the master: [partition numel]
        self.flats = saved if self.restored else [m.detach().clone() for m in self.masters]
        self.last_decay = 0.0

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step ``step``: fold the weights in (nothing when DeepSpeed skipped the step)."""
        if not self.engine.was_step_applied():
            return
        decay = decay_at(self.cfg, step)
        for master, ema in zip(self.masters, self.flats):
            if decay == 0.0:
                ema.copy_(master)
            elif decay != 1.0:
                ema.mul_(decay).add_(master, alpha=1.0 - decay)
        self.last_decay = decay
        for master, ema in zip(self.masters, self.flats):
            state = self.state.get(master)
            if state:  # AdamW has created its state: the EMA goes into the checkpoint with it
                state[EMA_KEY] = ema


def build(cfg: EmaConfig, engine, resumed_step: int) -> ShardedEma | None:
    """The run's EMA (None when ``model.ema.decay`` is null), after ``engine`` has been restored to
    ``resumed_step``. A checkpoint without EMA starts it from the resumed weights (with a warning)."""
    if not cfg.enabled:
        if discard(engine):
            log.warning("model.ema is off: the checkpoint's EMA is dropped")
        return None
    ema = ShardedEma(cfg, engine)
    if resumed_step > 0 and not ema.restored:
        log.warning(f"the checkpoint has no EMA: it starts from the weights of step {resumed_step}")
    return ema
