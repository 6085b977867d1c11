"""DeepSpeed set-up: the process groups, the JSON config merged with our tree, ``deepspeed.initialize``.

The JSON under ``configs/deepspeed/`` owns ZeRO (stage, offload, buckets), precision and communication;
the training config owns batch size, gradient accumulation, optimizer, schedule and clipping, which are
written into the DeepSpeed config here (setting them in the JSON is an error, so there is one source).
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from megavg.train.config import TrainConfig
from megavg.utils.device import bind_local_device
from megavg.utils.errors import UserError
from megavg.utils.memory import return_large_frees_to_os

OWNED_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "optimizer",
    "scheduler",
)


def merge(base: dict, overrides: dict) -> dict:
    """Recursive dict merge: values of ``overrides`` win, nested mappings are merged."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed config dict for ``cfg`` (pure: no distributed state; used to validate early)."""
    path = Path(cfg.parallel.deepspeed)
    if not path.is_file():
        raise UserError(f"config parallel.deepspeed: {path} not found")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON ({err})") from None
    ds = merge(ds, cfg.parallel.deepspeed_overrides)
    owned = sorted(set(ds) & set(OWNED_KEYS))
    if owned:
        raise UserError(f"{path}: {owned[0]!r} is set from the training config; remove it from the JSON")
    opt = cfg.optimizer
    ds.update(
        train_micro_batch_size_per_gpu=cfg.data.batch_size,
        gradient_accumulation_steps=cfg.schedule.grad_accum,
        gradient_clipping=opt.grad_clip,
        optimizer={
            "type": "AdamW",
            "params": {
                "lr": opt.lr,
                "betas": list(opt.betas),
                "eps": opt.eps,
                "weight_decay": opt.weight_decay,
                "torch_adam": True,  # torch's AdamW: no JIT-compiled C++ CPU Adam
                "adam_w_mode": True,
            },
        },
    )
    ds.setdefault("steps_per_print", 10**9)
    _check_ema(cfg, ds)
    return ds


def _check_ema(cfg: TrainConfig, ds: dict) -> None:
    """``model.ema`` shards the EMA like the stage-3 fp32 master partitions, kept in memory."""
    if not cfg.model.ema.enabled:
        return
    zero = ds.get("zero_optimization", {})
    if zero.get("stage") != 3:
        raise UserError("config model.ema: needs ZeRO stage 3 in the DeepSpeed JSON")
    if zero.get("offload_optimizer", {}).get("device") == "nvme":
        raise UserError("config model.ema: not supported with NVMe offload of the optimizer")


def lr_lambda(cfg: TrainConfig):
    """Multiplier of ``optimizer.lr`` at optimizer step ``n``: linear warmup, then the decay."""
    sched = cfg.schedule
    warmup, total, floor = sched.warmup_steps, sched.steps, sched.min_lr_ratio

    def factor(n: int) -> float:
        if n < warmup:
            return (n + 1) / warmup
        if sched.decay == "constant":
            return 1.0
        progress = min(1.0, (n - warmup) / max(1, total - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if sched.decay == "cosine" else 1 - progress
        return floor + (1 - floor) * shape

    return factor


def init_distributed(backend: str) -> None:
    """Start torch.distributed through DeepSpeed: NCCL on GPU, gloo on CPU (``backend="auto"``)."""
    import deepspeed

    if "RANK" not in os.environ:  # plain `python -m megavg.train`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if bind_local_device().type != "cuda":
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (about a minute of C++ on the
        # first launch) that only its inference all-reduce uses; training collectives go through gloo.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def zero_init(cfg: TrainConfig, ds: dict):
    """Context that partitions parameters as modules are built (``parallel.zero_init``), else a no-op."""
    import deepspeed

    enabled = cfg.parallel.zero_init
    if enabled and ds.get("zero_optimization", {}).get("stage") != 3:
        raise UserError("config parallel.zero_init: needs ZeRO stage 3 in the DeepSpeed JSON")
    if enabled and not torch.cuda.is_available():  # layers are built in host memory: no heap holes
        return_large_frees_to_os()
    return deepspeed.zero.Init(config_dict_or_path=ds, enabled=enabled)


def initialize(cfg: TrainConfig, model: nn.Module, params: list[nn.Parameter]) -> Any:
    """``deepspeed.initialize`` over the trainable ``params``: ZeRO partitions over all ranks and
    gradients are averaged over all ranks (see :mod:`megavg.parallel.state` for the SP scaling)."""
    import deepspeed
    from torch.optim.lr_scheduler import LambdaLR

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=params,
        config=deepspeed_config(cfg),
        lr_scheduler=lambda optimizer: LambdaLR(optimizer, lr_lambda(cfg)),
    )
    return engine


def partition_bytes(engine) -> int:
    """Bytes of ZeRO-3 model states this rank holds: parameter partitions, gradient partitions, fp32
    master partitions and optimizer state (after the first step)."""
    total = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in engine.module.parameters())
    opt = engine.optimizer
    grads = getattr(opt, "grad_partitions_flat_buffer", None)
    total += grads.numel() * grads.element_size() if grads is not None else 0
    total += sum(t.numel() * t.element_size() for t in getattr(opt, "fp32_partitioned_groups_flat", []))
    for state in opt.optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v) and v.dim())
    return total
