"""Model FLOPs per training step and MFU (``perf/tflops_per_gpu``, ``perf/mfu``; docs/validation.md).

The count comes from the planner's tracer (:func:`megavg.utils.meta_trace.trace_training_flops`): the task's
model, built on the meta device without activation checkpointing, runs forward and backward on meta
tensors of the micro-batch's actual shapes (:meth:`megavg.tasks.base.Task.flop_inputs`). Counted:
matmuls and convolutions (2 m n k each) as autograd runs them - the input gradient only where the input
needs one, the weight gradient only for trained weights (frozen layers: none; LoRA: the small adapter
GEMMs) - and attention (4 B S_q S_k d forward, twice that backward). Not counted: elementwise ops, norms,
softmax, the loss, and activation-checkpointing recompute (model FLOPs, not executed FLOPs). One trace
per distinct batch shape (cached); Wan models are traced with 1 and 2 blocks and extrapolated (every
block is the same).

Per GPU: a micro-batch's FLOPs divided by ``parallel.sp_size`` (SP ranks share one sample), summed over
the step's micro-batches, averaged over ranks. MFU = TFLOP/s per GPU / dense peak per GPU.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from megavg.tasks import build_task
from megavg.tasks.base import Task, model_args, set_trainable
from megavg.train.config import TrainConfig
from megavg.utils.meta_trace import trace_training_flops

# Dense (no sparsity) peak TFLOP/s per GPU: (bf16/fp16 tensor core, FP8 tensor core). NVIDIA's datasheets
# quote "with sparsity" figures; dense = half of them. H100 / H200: H100 Tensor Core GPU datasheet and H200
# product page (SXM: BF16 1,979 / FP8 3,958 sparse; PCIe: 1,513 / 3,026; NVL: 1,671 / 3,341); A100
# datasheet (BF16 312 dense, no FP8); B200: HGX B200 datasheet (8 GPUs: FP16/BF16 36 PFLOPS, FP8
# 72 PFLOPS sparse -> 2.25 / 4.5 PFLOPS dense per GPU). Matched against the device name, first hit wins.
PEAK_TFLOPS: list[tuple[str, float, float | None]] = [
    ("h200 nvl", 835.0, 1670.0),
    ("h200", 989.0, 1979.0),
    ("h100 nvl", 835.0, 1670.0),
    ("h100 pcie", 756.0, 1513.0),
    ("h100", 989.0, 1979.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("a100", 312.0, None),
    ("b200", 2250.0, 4500.0),
]


def table_peak(device_name: str, fp8: bool) -> float | None:
    """The dense peak for a device name (``torch.cuda.get_device_name()``), or None when unknown."""
    name = device_name.lower()
    for key, bf16, f8 in PEAK_TFLOPS:
        if key in name:
            return f8 if fp8 else bf16
    return None


def peak_tflops(cfg: TrainConfig, device: torch.device) -> float | None:
    """``logging.peak_tflops``, else the table's peak for this GPU (FP8 when the model's linears run in
    FP8, else bf16; fp32 runs are measured against bf16 too); None on CPU or an unknown GPU."""
    if cfg.logging.peak_tflops is not None:
        return cfg.logging.peak_tflops
    if device.type != "cuda":
        return None
    layers = getattr(model_args(cfg.model), "layers", None)
    fp8 = bool(layers is not None and layers.fp8.enabled)
    return table_peak(torch.cuda.get_device_name(device), fp8)


def build_meta(cfg: TrainConfig) -> nn.Module:
    """The task's model (freezing, LoRA included) on the meta device."""
    task = build_task(cfg)
    task.validate()
    with torch.device("meta"):
        return task.build_model()


def with_layers(cfg: TrainConfig, layers: int) -> TrainConfig:
    """``cfg`` with a Wan model of ``layers`` blocks and no activation checkpointing."""
    model_cfg = dataclasses.replace(cfg.model, activation_checkpointing=False)
    model_cfg.args = {**model_cfg.args, "num_layers": layers}
    return dataclasses.replace(cfg, model=model_cfg)


class StepFlops:
    """``flops(batch)``: model FLOPs (forward + backward) of one micro-batch on one GPU, or None when the
    task gives no shapes. Cached per distinct set of shapes."""

    def __init__(self, cfg: TrainConfig, task: Task) -> None:
        self.cfg, self.task = cfg, task
        self.cache: dict[tuple, int | None] = {}
        self.models: dict[int, torch.nn.Module] = {}

    def __call__(self, batch: dict) -> int | None:
        shapes = self.task.flop_inputs(batch)
        if shapes is None:
            return None
        if shapes not in self.cache:
            self.cache[shapes] = self.count(shapes) // self.cfg.parallel.sp_size
        return self.cache[shapes]

    def count(self, shapes: tuple) -> int:
        """Forward + backward FLOPs of the whole model on inputs of ``shapes`` (None entries: no input)."""
        layers = getattr(model_args(self.cfg.model), "num_layers", None)
        if layers is None:
            return self._trace(None, shapes)
        one, two = self._trace(1, shapes), self._trace(2, shapes)
        return one + (layers - 1) * (two - one)

    def _trace(self, layers: int | None, shapes: tuple) -> int:
        model = self._model(layers)
        with torch.device("meta"):
            inputs = [None if s is None else torch.empty(s) for s in shapes]
        forward, backward = trace_training_flops(lambda: model(*inputs))
        return forward + backward

    def _model(self, layers: int | None) -> torch.nn.Module:
        if layers not in self.models:
            cfg = _without_init(self.cfg)
            if layers is None:
                model_cfg = dataclasses.replace(cfg.model, activation_checkpointing=False)
                cfg = dataclasses.replace(cfg, model=model_cfg)
            else:
                cfg = with_layers(cfg, layers)
            model = build_meta(_torch_layers(cfg))
            set_trainable(model, cfg.model.trainable)
            self.models[layers] = model
        return self.models[layers]


def _torch_layers(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with torch linears and SDPA (no FP8) for the meta trace: the same GEMMs and attention as
    TE / flash-attn, which refuse the trace's float32 meta inputs (flash-attn: fp16/bf16 only)."""
    if not hasattr(model_args(cfg.model), "layers"):
        return cfg
    model_cfg = dataclasses.replace(cfg.model)
    model_cfg.args = {**model_cfg.args, "layers": {"linear": "torch", "attention": "sdpa"}}
    return dataclasses.replace(cfg, model=model_cfg)


def _without_init(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``model.init`` replaced by its full args on a preset of the same family (the count
    needs the architecture, not the weights; a 1-block model would not match the folder's keys)."""
    from megavg.models import registry
    from megavg.utils.schema import to_dict

    if not cfg.model.init:
        return cfg
    args = to_dict(model_args(cfg.model))
    args.pop("grad_checkpointing", None)  # follows model.activation_checkpointing
    family = registry.family_of(model_args(cfg.model))
    preset = next(name for name, fam in registry.list_presets().items() if fam == family)
    model_cfg = dataclasses.replace(cfg.model, init="", preset=preset, args=args)
    return dataclasses.replace(cfg, model=model_cfg)
