"""Adversarial training pieces: GAN losses, the adaptive weight, and the discriminator's DeepSpeed engine.

The discriminator is its own DeepSpeed engine (own AdamW, ZeRO stage and precision from the run's
DeepSpeed JSON, constant learning rate), stepped by the task in the same training step as the generator
and checkpointed by the trainer next to the main engine (``<tag>/discriminator/``).

Generator gradients never touch the discriminator's parameters: the generator's loss terms are
differentiated with ``torch.autograd.grad`` with respect to the reconstruction only, and the generator
engine back-propagates ``<recon, dL/drecon>`` (:func:`through_output`), which has exactly the gradient of
the weighted sum. The generator's adversarial term goes through a frozen plain *replica* of the
discriminator (:func:`copy_weights`, refreshed after every discriminator step; the discriminator is
small, so a full copy per rank is cheap): running ``autograd.grad`` through the ZeRO-3 engine itself
corrupts that engine's next gradient (DeepSpeed 0.19 treats any backward through its hooked modules as a
backward of the engine; measured: the following discriminator step differs from one without it).

Adaptive weight (after VQGAN): lambda = ||dL_rec/dy|| / (||dL_adv/dy|| + 1e-4), clamped to
[0, ``max_weight``], detached. VQGAN takes the gradients at the decoder's last-layer *weight*; under ZeRO-3
that weight is a partition on each rank and under sequence parallelism each rank only holds the part of
its gradient coming from its own frames, so it would need a gather and an all-reduce. We take them at the
decoder's *output* y (the full reconstruction, which every rank of an SP group holds identically after
the time gather): no communication, the same value on every rank of a group, and the same role (balance
the two terms' pull on the generator). Ranks of different data-parallel groups compute their own lambda,
as VQGAN does per GPU.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F

LossKind = Literal["hinge", "non_saturating"]


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: LossKind) -> torch.Tensor:
    """Discriminator loss from logits on real and reconstructed clips (mean of the two halves)."""
    if kind == "hinge":
        return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())  # -log sigmoid(r) - log(1 - sigmoid(f))


def generator_loss(fake: torch.Tensor, kind: LossKind) -> torch.Tensor:
    """Generator's adversarial loss from the discriminator's logits on reconstructions."""
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()  # -log sigmoid(f)


def adaptive_weight(grad_rec: torch.Tensor, grad_adv: torch.Tensor, max_weight: float) -> torch.Tensor:
    """||grad_rec|| / (||grad_adv|| + 1e-4), clamped to [0, max_weight] (no gradient)."""
    ratio = grad_rec.detach().norm() / (grad_adv.detach().norm() + 1e-4)
    return ratio.clamp(0.0, max_weight)


def through_output(output: torch.Tensor, value: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A scalar equal to ``value`` whose gradient with respect to ``output`` is ``grad`` (and which reaches
    the parameters only through ``output``)."""
    link = (output * grad.detach()).sum()
    return value.detach() + link - link.detach()


def copy_weights(source: torch.nn.Module, replica: torch.nn.Module) -> None:
    """Copy ``source``'s current weights (gathered when ZeRO-3 partitions them; collective then) into
    the plain module ``replica`` of the same architecture."""
    import contextlib

    params = list(source.parameters())
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gather, torch.no_grad():
        for dst, src in zip(replica.parameters(), params, strict=True):
            dst.copy_(src.data)


def engine_config(ds_config: dict, lr: float, betas: tuple[float, float]) -> dict:
    """The run's DeepSpeed config with the discriminator's optimizer (AdamW, constant ``lr``)."""
    ds = copy.deepcopy(ds_config)
    ds.pop("scheduler", None)
    ds["optimizer"] = {
        "type": "AdamW",
        "params": {
            "lr": lr,
            "betas": list(betas),
            "weight_decay": 0.0,
            "torch_adam": True,  # torch's AdamW: no JIT-compiled C++ CPU Adam
            "adam_w_mode": True,
        },
    }
    return ds


def build_engine(module: torch.nn.Module, ds_config: dict):
    """``deepspeed.initialize`` of the discriminator over all its parameters."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(
        model=module, model_parameters=list(module.parameters()), config=ds_config
    )
    return engine
