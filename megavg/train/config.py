"""The training config tree: dataclasses, loaded from YAML plus ``section.key=value`` overrides.

Every key is checked (unknown keys and wrong types are errors naming the key path) before any process
group or DeepSpeed engine exists, so a typo fails in seconds with one line. A YAML file lists only what
it changes from these defaults. The resolved tree is written to ``run.dir/config.yaml`` and into every
checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml

from megavg.data.config import DataConfig
from megavg.utils.errors import UserError
from megavg.utils.schema import from_dict, to_dict


@dataclasses.dataclass
class RunConfig:
    """``dir`` holds ``checkpoints/`` (DeepSpeed tags + ``latest``), ``tensorboard/``, ``metrics.jsonl``
    and ``config.yaml``; rerunning the same command resumes from ``checkpoints/latest``."""

    dir: str = "runs/default"


@dataclasses.dataclass
class TaskConfig:
    """Which objective (``megavg.tasks`` registry name) and its own options (checked by the task)."""

    name: str = "dcaev_recon"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EmaConfig:
    """Exponential moving average of the trainable weights (:mod:`megavg.train.ema`); ``decay: null`` =
    off. The EMA equals the weights up to and including optimizer step ``start_step`` (step 0: the initial
    weights), then after every ``every``-th step from there ``ema = decay * ema + (1 - decay) * weights``."""

    decay: float | None = None
    start_step: int = 0
    every: int = 1

    def __post_init__(self) -> None:
        if self.decay is not None and not 0.0 <= self.decay <= 1.0:
            raise UserError(f"config model.ema.decay: must be in [0, 1] (or null = off), got {self.decay}")
        if self.start_step < 0:
            raise UserError(f"config model.ema.start_step: must be >= 0, got {self.start_step}")
        if self.every < 1:
            raise UserError(f"config model.ema.every: must be >= 1, got {self.every}")

    @property
    def enabled(self) -> bool:
        return self.decay is not None


@dataclasses.dataclass
class ModelConfig:
    """A preset (``megavg.models.list_presets()``) with ``args`` overriding its fields, or ``init``: a
    megavg model folder whose weights start the run. ``trainable``: glob patterns of parameter names to
    train (empty = all); the rest are frozen and, with ``checkpoint.exclude_frozen``, not checkpointed."""

    preset: str = ""
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    init: str = ""
    trainable: list[str] = dataclasses.field(default_factory=list)
    activation_checkpointing: bool = False
    ema: EmaConfig = dataclasses.field(default_factory=EmaConfig)


@dataclasses.dataclass
class OptimizerConfig:
    """AdamW (torch's implementation, driven by DeepSpeed) with global-norm gradient clipping."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0


@dataclasses.dataclass
class ScheduleConfig:
    """``steps`` optimizer steps; linear warmup then ``decay`` to ``min_lr_ratio * lr``. A NaN/Inf loss
    on any rank stops the run (exit 1) before that step's update, without writing a checkpoint."""

    steps: int = 1000
    grad_accum: int = 1
    warmup_steps: int = 0
    decay: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"config schedule.{name}: must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass
class ParallelConfig:
    """``sp_size`` ranks share one sample (1 = off). ``deepspeed`` is a JSON config (ZeRO stage, bf16,
    offload, communication); ``deepspeed_overrides`` is merged into it. Batch size, optimizer and
    clipping come from this tree and must not appear in the JSON. ``backend`` ``auto`` is NCCL on GPU,
    gloo on CPU. ``zero_init``: build the model under ``deepspeed.zero.Init`` so that no rank ever holds
    all weights, and read only this rank's partitions of ``model.init`` (needed for the 14B DiT, set in
    the AE-Adapt-V configs; ZeRO stage 3 only). ``timeout_minutes``: how long any collective may wait for
    the slowest rank before the run fails (``deepspeed.init_distributed(timeout=...)``; DeepSpeed's own
    default is 10 minutes, too short for a rank that loads or hashes a 14B checkpoint while the others
    wait)."""

    sp_size: int = 1
    zero_init: bool = False
    deepspeed: str = "configs/deepspeed/zero3_bf16.json"
    deepspeed_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    timeout_minutes: float = 30.0

    def __post_init__(self) -> None:
        if self.sp_size < 1:
            raise UserError(f"config parallel.sp_size: must be >= 1, got {self.sp_size}")
        if not self.timeout_minutes > 0:
            raise UserError(f"config parallel.timeout_minutes: must be > 0, got {self.timeout_minutes}")


@dataclasses.dataclass
class CheckpointConfig:
    """Sharded DeepSpeed checkpoint every ``every`` steps (0 = only at the end and on SIGUSR1/SIGTERM);
    the newest ``keep`` are kept."""

    every: int = 500
    keep: int = 2
    exclude_frozen: bool = True

    def __post_init__(self) -> None:
        if self.every < 0 or self.keep < 1:
            raise UserError("config checkpoint: every must be >= 0 and keep >= 1")


@dataclasses.dataclass
class LoggingConfig:
    """Rank 0 writes tensorboard scalars, ``metrics.jsonl`` and a status line every ``every`` steps."""

    every: int = 1
    tensorboard: bool = True
    peak_tflops: float | None = None  # per-GPU dense peak for perf/mfu (default: the GPU table)

    def __post_init__(self) -> None:
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise UserError(f"config logging.peak_tflops: must be > 0 (or null), got {self.peak_tflops}")


@dataclasses.dataclass
class ValidationConfig:
    """Sample videos from the live model every ``every`` steps and at the end (0 = off); see
    docs/validation.md. ``prompts``: a list, or a text file with one prompt per line. ``images``: one
    first-frame image per prompt (I2V models). Components the DiT lacks: ``vae`` (DC-AE-V model folder)
    and ``text_encoder`` (umT5 folder or hub id; ``tokenizer`` when not inside it; ``image_encoder`` for
    I2V), or ``pipeline`` (an exported pipeline folder providing all of them). ``partner``: a Wan 2.2
    two-expert run's other expert (docs/wan22.md)."""

    every: int = 0
    prompts: list[str] | str = dataclasses.field(default_factory=list)
    images: list[str] = dataclasses.field(default_factory=list)
    size: tuple[int, int] = (480, 832)
    frames: int = 32
    steps: int = 30
    guidance: float = 5.0
    shift: float = 5.0
    solver: Literal["unipc", "euler"] = "unipc"
    seed: int = 0
    negative_prompt: str = ""
    fps: int = 16
    pipeline: str = ""
    vae: str = ""
    text_encoder: str = ""
    tokenizer: str = ""
    image_encoder: str = ""
    # Wan 2.2 A14B (one job per expert): the other expert's model folder, frozen, so each video runs both
    # experts switched at the boundary; this run's side and the boundary come from task.args.timestep_range
    partner: str = ""
    guidance_2: float | None = None  # with partner: the low-noise expert's guidance (default: guidance)

    def __post_init__(self) -> None:
        for name in ("every", "seed"):
            if getattr(self, name) < 0:
                raise UserError(f"config validation.{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("frames", "steps", "fps"):
            if getattr(self, name) < 1:
                raise UserError(f"config validation.{name}: must be >= 1, got {getattr(self, name)}")
        if self.shift <= 0:
            raise UserError(f"config validation.shift: must be > 0, got {self.shift}")

    @property
    def enabled(self) -> bool:
        return self.every > 0


@dataclasses.dataclass
class TrainConfig:
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML, so ``3`` is an int, ``[1, 2]`` a list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise UserError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key.split("."), value


def _set(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from ``path`` (empty file = {})."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults <- YAML file <- ``section.key=value`` overrides, checked against :class:`TrainConfig`."""
    tree = read_yaml(path) if path else {}
    for text in overrides:
        key, value = parse_override(text)
        _set(tree, key, value)
    return from_dict(TrainConfig, tree)


def dump_config(cfg: TrainConfig) -> str:
    """The resolved tree as YAML (reloadable with :func:`load_config`)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
