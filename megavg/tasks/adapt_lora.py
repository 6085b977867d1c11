"""AE-Adapt-V phase 3: LoRA fine-tuning end to end with the diffusion loss (DESIGN.md section 5).

peft injects LoRA (rank 256, alpha 512 in the paper) into every linear layer except cross-attention, the
text embedding and the head; the patch embedder and the output linear train fully; the rest is frozen
(and, with ``checkpoint.exclude_frozen``, left out of checkpoints). ``tools/consolidate.py`` folds the
trained LoRA into the base weights (:meth:`Task.export_state`) and writes a plain model folder.
Phase 2 (patch/head fine-tuning) needs no module: ``flow_matching`` with
``model.trainable: [patch_embed.*, head.linear.*]``.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from megavg.layers.linear import is_linear
from megavg.parallel import zero_load
from megavg.tasks import flow_matching
from megavg.utils.errors import UserError
from megavg.utils.lazy import CastTensor, materialize


@dataclasses.dataclass
class Args(flow_matching.Args):
    rank: int = 256
    alpha: float = 512.0
    exclude: list[str] = dataclasses.field(default_factory=lambda: ["cross_attn", "text_embed", "head"])
    train_fully: list[str] = dataclasses.field(default_factory=lambda: ["patch_embed", "head.linear"])


def lora_targets(model: nn.Module, exclude: list[str]) -> list[str]:
    """Names of the linear layers to adapt: every plain linear of either backend (``nn.Linear`` or
    ``te.Linear``, :func:`megavg.layers.linear.is_linear`; peft wraps both, its ``TeLinear`` for TE)
    whose dotted name has no ``exclude`` part. The same names whichever backend built the model."""
    return [
        name
        for name, module in model.named_modules()
        if is_linear(module) and not any(f".{word}." in f".{name}." for word in exclude)
    ]


def lora_scale(args: Args) -> float:
    return args.alpha / args.rank


def _groups(targets: list[str]) -> list[list[str]]:
    """``targets`` (in model order) grouped by top-level module, transformer blocks one by one."""
    groups: dict[str, list[str]] = {}
    for name in targets:
        parts = name.split(".")
        groups.setdefault(".".join(parts[:2] if parts[0] == "blocks" else parts[:1]), []).append(name)
    return list(groups.values())


def inject_lora(model: nn.Module, targets: list[str], rank: int, alpha: float) -> nn.Module:
    """peft LoRA adapters on the linear layers ``targets`` of ``model`` (A: peft's Kaiming init, B: 0).

    peft creates the adapters as whole tensors after the model exists. Under ``zero.Init`` (the base
    partitioned: peft reads in/out features from the layers, not the empty weights) each group of
    adapters (one transformer block) is partitioned right after it is created, so a rank holds whole
    LoRA tensors of one block at a time, not of the model. The adapters are created in model order,
    with the same random draws as one ``inject_adapter_in_model`` call over all targets.
    """
    for group in _groups(targets):
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=group, lora_dropout=0.0)
        with warnings.catch_warnings():  # "Already found a peft_config": expected, one adapter per group
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            model = inject_adapter_in_model(config, model)
        zero_load.partition_new(model)
    model.peft_config = {
        "default": LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)
    }
    return model


class Task(flow_matching.Task):
    Args = Args

    def build_model(self) -> nn.Module:
        model = super().build_model()
        targets = lora_targets(model, self.args.exclude)
        if not targets:
            raise UserError("task adapt_lora: no linear layer left to adapt after task.args.exclude")
        model = inject_lora(model, targets, self.args.rank, self.args.alpha)
        for name, param in model.named_parameters():
            param.requires_grad_(self.trains(name))
        return model

    def trains(self, name: str) -> bool:
        """Whether parameter ``name`` (peft naming) is trained: an adapter or a ``train_fully`` layer."""
        return ".lora_" in name or name.startswith(tuple(p + "." for p in self.args.train_fully))

    def export_state(self, trained: dict, initial, keys: set[str]) -> dict:
        """The LoRA merged into the starting weights: a plain model without adapters.

        Only trained tensors are taken from the checkpoint. The frozen ones it may also hold
        (``checkpoint.exclude_frozen=false``, ``base_layer`` included) are the starting weights rounded to
        the training dtype under bf16 ZeRO-3: the exact starting weights (``initial``) are used instead.
        """
        learned = {k: v for k, v in trained.items() if self.trains(k)}
        return merge_lora(initial(), learned, lora_scale(self.args))


@dataclasses.dataclass(frozen=True)
class MergedWeight:
    """A lazy tensor (:func:`megavg.utils.lazy.materialize`): ``base + scale * up @ down`` in float32,
    cast to ``dtype``, computed only when the writer asks for it (one weight at a time)."""

    base: object  # out, in
    down: object  # lora_A: r, in
    up: object  # lora_B: out, r
    scale: float
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.base.shape)

    def contiguous(self) -> torch.Tensor:
        weight = materialize(self.base).float()
        up, down = materialize(self.up).float(), materialize(self.down).float()
        # out of place: an fp32 base tensor is the caller's own (.float() does not copy it)
        return torch.addmm(weight, up, down, alpha=self.scale).to(self.dtype)  # (out, r) @ (r, in) -> out, in


def merge_lora(base: dict, trained: dict, scale: float) -> dict:
    """Fold trained LoRA pairs into the base weights (W + scale * B @ A) and copy trained tensors.

    ``trained`` holds peft-named tensors (``X.lora_A.default.weight``, ``X.lora_B.default.weight``,
    ``X.base_layer.weight`` or plain names), lazy or not. A checkpoint written with
    ``checkpoint.exclude_frozen=false`` also holds the frozen ``X.base_layer.weight``: it is the W the
    adapter is merged into, never a replacement of the merged weight. The result has ``base``'s keys,
    dtypes and shapes, and every changed entry is lazy: nothing is computed here, the writer materialises
    one weight at a time (peak memory: one output shard, not the model).
    """
    merged = dict(base)
    adapters = []
    for key, value in trained.items():
        if ".lora_B." in key:
            continue
        if ".lora_A." in key:
            prefix, adapter = key.split(".lora_A.")
            adapters.append((f"{prefix}.weight", value, trained[f"{prefix}.lora_B.{adapter}"]))
            continue
        plain = key.replace(".base_layer.", ".")
        if plain not in base:
            raise UserError(f"trained tensor {key!r} has no counterpart {plain!r} in the base weights")
        merged[plain] = CastTensor(value, base[plain].dtype)
    for weight, down, up in adapters:  # after the copies: W is the trained base_layer when there is one
        merged[weight] = MergedWeight(merged[weight], down, up, scale, base[weight].dtype)
    return merged
