"""What every task shares: building the model from ``model:``, freezing, and the loss interface."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from megavg.models import registry
from megavg.parallel import zero_load
from megavg.utils.errors import UserError
from megavg.utils.schema import from_dict, to_dict


@dataclasses.dataclass
class StepContext:
    """Per-micro-batch facts a task may need. ``generator`` is seeded from (seed, micro-batch index,
    data-parallel rank): every rank of one SP group draws the same noise and timesteps."""

    step: int
    generator: torch.Generator
    device: torch.device
    dtype: torch.dtype
    sp_group: Any = None


def compute_dtype(ds: dict) -> torch.dtype:
    """The dtype a DeepSpeed config ``ds`` computes in: bf16, fp16, else float32."""
    if ds.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DeepSpeed engine (or the module itself)."""
    return getattr(model, "module", model)


def model_args(model_cfg) -> Any:
    """The model's args dataclass: the preset's (or ``init`` folder's) fields updated by ``model.args``.

    Cheap (no weights): used to validate the config before launch.
    """
    if model_cfg.init:
        config = registry.read_config(model_cfg.init)
        family = importlib.import_module(registry.FAMILIES[config["family"]])
        base = from_dict(family.Args, config.get("args", {}), f"{model_cfg.init} args")
        if model_cfg.preset:
            check_init_matches_preset(model_cfg, base)
    elif model_cfg.preset:
        base = registry.preset_args(model_cfg.preset)
    else:
        raise UserError("config model: set model.preset (a preset name) or model.init (a model folder)")
    merged = {**to_dict(base), **model_cfg.args}
    if model_cfg.activation_checkpointing:
        if "grad_checkpointing" not in merged:
            name = type(base).__module__
            raise UserError(f"config model.activation_checkpointing: {name} models do not support it")
        merged["grad_checkpointing"] = True
    return from_dict(type(base), merged, "model.args")


RUN_CHOICES = ("layers", "grad_checkpointing", "scaling_factor")  # args that do not change the weights


def check_init_matches_preset(model_cfg, init_args: Any) -> None:
    """With both ``model.preset`` and ``model.init`` set, the folder's architecture must be the preset's
    (fields ``model.args`` sets and the run choices :data:`RUN_CHOICES` aside): a config written for the
    14B preset must not quietly train the tiny model an ``init`` folder holds."""
    preset = registry.preset_args(model_cfg.preset)
    where = f"config model.init: {model_cfg.init}"
    if registry.family_of(preset) != registry.family_of(init_args):
        raise UserError(f"{where} holds a {registry.family_of(init_args)} model, model.preset "
                        f"{model_cfg.preset} is {registry.family_of(preset)}")  # fmt: skip
    ours, theirs = to_dict(init_args), to_dict(preset)
    skip = set(RUN_CHOICES) | set(model_cfg.args)
    differ = [k for k in theirs if k not in skip and ours.get(k) != theirs[k]]
    if differ:
        shown = ", ".join(f"{k} {_short(ours.get(k))} (preset: {_short(theirs[k])})" for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise UserError(f"{where} is not the architecture of model.preset {model_cfg.preset}: {shown}{more}; "
                        "drop model.preset to train the folder's model as it is")  # fmt: skip


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else "{...}"


def init_state(folder: str, args: Any) -> dict[str, registry.StoredTensor]:
    """The tensors of model folder ``folder`` as lazy entries (nothing read yet), checked against the
    keys and shapes of a model built from ``args`` (on meta: before any real model is built)."""
    state = registry.load_state_dict(folder, lazy=True)
    with torch.device("meta"):
        registry.check_state_dict(registry.build(args), state, folder)
    return state


def set_trainable(model: nn.Module, patterns: list[str]) -> list[nn.Parameter]:
    """Freeze every parameter whose name matches none of ``patterns`` (empty = train all)."""
    if not patterns:
        return [p for p in model.parameters() if p.requires_grad]
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise UserError(f"config model.trainable: {pattern!r} matches no parameter")
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(any(fnmatch.fnmatchcase(name, p) for p in patterns))
        if param.requires_grad:
            trainable.append(param)
    return trainable


class Task:
    """Base objective. Subclasses set ``Args`` and implement :meth:`loss` (and :meth:`parallelize` when
    they support sequence parallelism)."""

    Args: type = dict

    def __init__(self, args: Any, cfg) -> None:
        self.args = args
        self.cfg = cfg
        # The trainer sets this to deepspeed.zero.Init (parallel.zero_init) around model construction.
        self.init_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def validate(self) -> None:
        """Cheap checks run before launch (default: the model args resolve)."""
        model_args(self.cfg.model)

    def build_model(self) -> nn.Module:
        """The model to train, in fp32, weights from ``model.init`` when set (under zero.Init: each rank
        reads only its partitions, :mod:`megavg.parallel.zero_load`)."""
        args, init = model_args(self.cfg.model), self.cfg.model.init
        state = init_state(init, args) if init else None
        with self.init_context():
            model = registry.build(args)
        if state is not None:
            zero_load.load_state(model, state, init)  # one tensor (or partition) at a time
        return model

    def setup(self, ds_config: dict, device: torch.device) -> dict[str, Any]:
        """Called by the trainer once the main engine exists: build what the task needs beside the model
        (frozen networks, evaluators) and return its auxiliary DeepSpeed engines by name (e.g. a GAN
        discriminator). The trainer checkpoints each under ``<tag>/<name>/`` and restores it on resume;
        the task steps them itself inside :meth:`loss`. Default: none."""
        return {}

    def on_step_end(self, model: nn.Module, step: int, metrics) -> None:
        """Called on every rank after optimizer step ``step`` (1-based) and its logging, before any
        checkpoint: periodic evaluation (collective) writing through ``metrics`` (rank 0). Default: none."""

    def check_parallel(self, sp_size: int) -> None:
        """Pre-launch: refuse ``parallel.sp_size`` ranks per sample when the task or model cannot split
        one that way (default: any ``sp_size > 1`` needs :meth:`parallelize`)."""
        if sp_size > 1 and type(self).parallelize is Task.parallelize:
            raise UserError(f"config parallel.sp_size: task {self.cfg.task.name} has no sequence parallelism")

    def parallelize(self, model: nn.Module, sp_group) -> nn.Module:
        """Apply sequence parallelism over ``sp_group`` (called only when ``parallel.sp_size > 1``)."""
        raise UserError(f"config parallel.sp_size: task {type(self).__name__} has no sequence parallelism")

    def loss(self, model: nn.Module, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch; ``"loss"`` is the total that is back-propagated.

        With SP every rank of the group returns the same full loss (SP-sum gradient semantics).
        """
        raise NotImplementedError

    def export_state(
        self, trained: dict[str, torch.Tensor], initial: Callable[[], dict], keys: set[str]
    ) -> dict[str, torch.Tensor]:
        """Plain model weights (``keys``) from a checkpoint's trained tensors, for a model folder.

        Frozen weights left out of the checkpoint come from ``initial()`` (the run's starting weights).
        """
        return {**initial(), **trained} if keys - set(trained) else trained

    def flop_inputs(self, batch: dict) -> tuple | None:
        """Shapes of the model's positional inputs for ``batch`` (None entries: an input left out), for
        the FLOP count of :mod:`megavg.train.flops`; None: this task reports no FLOPs (default)."""
        return None

    def tokens(self, batch: dict) -> int:
        """Tokens (latent positions) in ``batch``, for the tokens/s metric."""
        return 0
