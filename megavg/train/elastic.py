"""Resume a ZeRO-3 checkpoint written at world size N into an engine running at world size M != N.

DeepSpeed 0.19's own ZeRO-3 load needs the same world size, and its universal checkpoint needs an offline
conversion that writes a second full copy (weights and both Adam moments) per tensor. Instead every rank
reads, straight from the N rank files (:class:`megavg.train.zero_checkpoint.ZeroCheckpoint`, memory-mapped),
only the element ranges of its own new partitions and writes them where the stage-3 optimizer keeps them:

- sub-group ``i`` of the optimizer owns the flat fp32 tensor ``fp32_partitioned_groups_flat[i]``: the
  concatenation, over the parameters of ``fp16_groups[i]``, of this rank's chunk ``[r*c, (r+1)*c)`` of
  the flattened parameter (``c = ceil(numel / M)``, zero-padded past the end);
- torch's AdamW keys its state by that flat tensor: ``exp_avg``, ``exp_avg_sq`` (flat the same way) and
  ``step``. Every per-parameter flat key of the checkpoint (:meth:`ZeroCheckpoint.flat_keys`) is
  re-partitioned alike, so extra per-parameter state (e.g. EMA weights) follows without code here;
- the working-precision partitions (``fp16_partitioned_groups_flat``, the ``ds_tensor`` of each
  parameter) are refreshed from the fp32 master, as DeepSpeed's own load does;
- frozen parameters, when the checkpoint holds them, are re-partitioned into their ``ds_tensor``; with
  ``exclude_frozen`` they stay as the model was built (``model.init`` or the seed), as on any resume.

Also restored: the optimizer hyperparameters, the LR scheduler, DeepSpeed's step counters and buffers.
Per-rank host memory: one new partition per key, never a full tensor.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import yaml

from megavg.parallel import state as parallel_state
from megavg.train.zero_checkpoint import PARAM, ZeroCheckpoint
from megavg.utils.errors import UserError
from megavg.utils.logging import get_logger

log = get_logger(__name__)


def check_same_model(ckpt: ZeroCheckpoint, engine) -> None:
    """One :class:`UserError` when the checkpoint's trainable parameters are not this run's (another
    preset, model or ``model.trainable``)."""
    opt = engine.optimizer
    mine = {engine.param_names[p]: torch.Size(p.ds_shape) for group in opt.fp16_groups for p in group}
    saved = dict(ckpt.param_shapes)
    missing, extra = sorted(set(mine) - set(saved)), sorted(set(saved) - set(mine))
    problems = [f"{len(missing)} parameter(s) not in it (e.g. {missing[0]})"] if missing else []
    problems += [f"{len(extra)} it has that this run does not train (e.g. {extra[0]})"] if extra else []
    if not problems:
        wrong = [n for n in mine if mine[n] != saved[n]]
        if wrong:
            problems = [f"{wrong[0]} is {tuple(saved[wrong[0]])} there, {tuple(mine[wrong[0]])} here"]
    if problems:
        raise UserError(
            f"{ckpt.dir}: checkpoint of another model (preset, model args or model.trainable differ): "
            + "; ".join(problems)
        )


def global_batch(ds_config: dict, dp_size: int) -> int:
    """Samples per optimizer step: micro-batch x accumulation x data-parallel ranks (SP ranks share one)."""
    return ds_config["train_micro_batch_size_per_gpu"] * ds_config["gradient_accumulation_steps"] * dp_size


def _warn_on_batch_change(ckpt: ZeroCheckpoint, engine) -> None:
    """The data position is ``step x grad_accum`` micro-batches per rank: the same global sample count only
    when the global batch is unchanged (README, "Elastic resume")."""
    path = ckpt.dir / "config.yaml"
    saved = yaml.safe_load(path.read_text()) if path.is_file() else None
    saved_sp = ((saved or {}).get("parallel") or {}).get("sp_size", 1)
    before = global_batch(ckpt.meta["ds_config"], ckpt.world_size // saved_sp)
    now = global_batch(engine.config, parallel_state.get_data_parallel_world_size())
    if before != now:
        log.warning(
            f"global batch changed from {before} to {now} samples: the data continues at micro-batch step x "
            "grad_accum of each new rank's stream, not at the same sample count"
        )


def _fill_partition(ckpt: ZeroCheckpoint, name: str, key: str, param, out: torch.Tensor) -> None:
    """Write this rank's chunk of ``name``/``key`` into ``out`` (1-D, the chunk's size), zero-padded."""
    rank = dist.get_rank(group=param.ds_process_group)
    numel, chunk = param.ds_numel, out.numel()
    start, stop = min(numel, rank * chunk), min(numel, (rank + 1) * chunk)
    out[: stop - start].copy_(ckpt.read_range(name, start, stop, key))
    out[stop - start :].zero_()


def _load_group(ckpt: ZeroCheckpoint, engine, index: int, keys: list[str], scalars: dict) -> None:
    """Sub-group ``index``: fp32 master and per-parameter optimizer state of this rank's partitions."""
    opt = engine.optimizer
    master = opt.fp32_partitioned_groups_flat[index]
    params = opt.fp16_groups[index]
    sizes = [p.partition_numel() for p in params]
    if sum(sizes) != master.numel():
        raise RuntimeError(
            f"sub-group {index}: partitions sum to {sum(sizes)}, flat group has {master.numel()}"
        )
    state: dict[str, Any] = {k: v.clone() if torch.is_tensor(v) else v for k, v in scalars.items()}
    for key in keys:
        flat = master.data if key == PARAM else torch.empty_like(master.data)
        for param, piece in zip(params, flat.split(sizes)):  # piece: view of this rank's chunk
            _fill_partition(ckpt, engine.param_names[param], key, param, piece)
        if key != PARAM:
            state[key] = flat
    opt.optimizer.state[master] = state
    low = opt.fp16_partitioned_groups_flat[index]
    if low is not None and low.data_ptr() != master.data_ptr():
        low.data.copy_(master.data)
    if low is not None:
        parts = opt.fp16_partitioned_groups[index]  # the params' ds_tensors, views into ``low``
        for part, view in zip(parts, opt.unflatten(low, parts)):
            part.data = view.data


def _load_frozen(ckpt: ZeroCheckpoint, engine) -> None:
    """Frozen parameters the checkpoint holds (not with ``exclude_frozen``) into their partitions."""
    frozen = ckpt.frozen_shapes
    for param in engine.module.parameters():
        name = engine.param_names[param]
        if name in frozen and hasattr(param, "ds_tensor"):
            piece = torch.empty(param.ds_tensor.numel(), dtype=torch.float32)
            _fill_partition(ckpt, name, PARAM, param, piece)
            param.ds_tensor.data.copy_(piece.view_as(param.ds_tensor))


@torch.no_grad()
def load_resharded(engine, ckpt: ZeroCheckpoint) -> dict:
    """Restore ``ckpt`` (any world size) into ZeRO-3 ``engine``; returns the checkpoint's model-state
    dict (``step`` and the rest of the client state)."""
    opt = engine.optimizer
    if not hasattr(opt, "fp32_partitioned_groups_flat"):
        raise UserError(f"{ckpt.dir}: resuming on another world size needs ZeRO stage 3 (this run is not)")
    if getattr(opt, "swap_optimizer", False) or getattr(opt, "params_in_nvme_and_cpu", False):
        raise UserError(f"{ckpt.dir}: resuming on another world size is not supported with NVMe offload")
    check_same_model(ckpt, engine)
    _warn_on_batch_change(ckpt, engine)
    keys, scalars = ckpt.flat_keys(), ckpt.scalar_state()
    opt.checkpoint_event_prologue()  # as DeepSpeed's load: every parameter partitioned, even persistent ones
    for index in range(len(opt.fp16_groups)):
        _load_group(ckpt, engine, index, keys, scalars)
    _load_frozen(ckpt, engine)
    opt.checkpoint_event_epilogue()  # persistent (small, never released) parameters gathered afresh
    for mine, saved in zip(opt.optimizer.param_groups, ckpt.param_groups()):
        mine.update({k: v for k, v in saved.items() if k != "params"})
    meta = ckpt.meta
    if engine.lr_scheduler is not None and meta.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(meta["lr_scheduler"])
    engine.global_steps = meta["global_steps"]
    engine.global_samples = meta.get("global_samples", engine.global_steps * engine.train_batch_size())
    engine.skipped_steps = meta["skipped_steps"]
    buffers = ckpt.buffers()
    if buffers:
        engine.module.load_state_dict(buffers, strict=False)
    return meta
