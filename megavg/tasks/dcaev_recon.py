"""DC-AE-V training: video -> encode -> decode, with the loss terms of the deep-compression recipe.

loss = l1_weight * L1 + mse_weight * MSE                          (phase 1: reconstruction)
     + perceptual.weight * LPIPS(frames)                          (phase 2: + perceptual, VGG16 features)
     + gan.weight * lambda * L_adv          from gan.start_step   (phase 3: + adversarial, 3-D PatchGAN)

Batches are ``{"video": B,3,T,H,W}`` in [-1, 1]. With ``parallel.sp_size > 1`` the autoencoder runs
temporally split over the SP group (``megavg.models.dcaev.parallelize.apply_temporal_sp``); every rank
of the group gets the same clip and computes every loss term on the gathered reconstruction.

Adversarial phase (see :mod:`megavg.tasks.gan`): in each micro-step the discriminator (its own ZeRO
engine) first takes a step on (real, reconstruction.detach()), then the generator's loss uses it; lambda
is the adaptive weight (``gan.adaptive``) or 1. Logged terms: ``l1``, ``mse``, ``perceptual``, ``g_adv``,
``gan_weight`` (gan.weight * lambda), ``d_loss``, ``logits_real``, ``logits_fake``, and ``latent_std``
(the std of this step's unscaled latents, not a loss: nothing bounds the latent scale of a deterministic
autoencoder, and a learning rate too high for the encoder's wide output convolution lets it run away,
after which the decoder's RMS-normalised residual branches can no longer add detail; see docs/training.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from megavg.metrics.perceptual import RANDOM, build_lpips, check_weight_files, sample_frames, video_distance
from megavg.models.dcaev.discriminator import DiscriminatorArgs, PatchDiscriminator3d
from megavg.models.dcaev.parallelize import apply_temporal_sp, gather_time, shard_time
from megavg.tasks import gan
from megavg.tasks.base import StepContext, compute_dtype, unwrap
from megavg.tasks.base import Task as BaseTask
from megavg.tasks.dcaev_eval import EvalArgs, Evaluator
from megavg.utils.errors import UserError


@dataclasses.dataclass
class PerceptualArgs:
    """LPIPS-style loss (``weight`` 0 = off) on ``frames`` random frames per clip and step (0 = all).
    ``vgg``: VGG16 weights with torchvision key names (``random``: random init, tests only); ``lpips``:
    optional lpips-package linear weights (else every channel weighs 1)."""

    weight: float = 0.0
    vgg: str = ""
    lpips: str = ""
    frames: int = 4


@dataclasses.dataclass
class GanArgs:
    """Adversarial loss (``weight`` 0 = off) from optimizer step ``start_step`` on (the discriminator
    trains from then too). ``loss``: hinge or non_saturating; ``adaptive``: scale by the VQGAN-style
    gradient ratio (at most ``max_adaptive``). Discriminator: ``discriminator`` architecture, AdamW with
    ``lr`` and ``betas`` (constant)."""

    weight: float = 0.0
    start_step: int = 0
    loss: gan.LossKind = "hinge"
    adaptive: bool = True
    max_adaptive: float = 1.0e4
    lr: float = 1.0e-4
    betas: tuple[float, float] = (0.5, 0.9)
    discriminator: DiscriminatorArgs = dataclasses.field(default_factory=DiscriminatorArgs)


@dataclasses.dataclass
class Args:
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    perceptual: PerceptualArgs = dataclasses.field(default_factory=PerceptualArgs)
    gan: GanArgs = dataclasses.field(default_factory=GanArgs)
    eval: EvalArgs = dataclasses.field(default_factory=EvalArgs)


class Task(BaseTask):
    Args = Args

    def __init__(self, args: Args, cfg) -> None:
        super().__init__(args, cfg)
        self.lpips = None
        self.disc = self.disc_replica = None
        self.evaluator = None

    def validate(self) -> None:
        super().validate()
        p = self.args.perceptual
        if p.weight or p.vgg:
            check_weight_files(p.vgg, p.lpips, "task.args.perceptual")
        if self.args.gan.start_step < 0:
            raise UserError("config task.args.gan.start_step: must be >= 0")
        if self.args.eval.every:
            from megavg.data.shards import list_shards

            list_shards(self.args.eval.shards, "video")

    def setup(self, ds_config: dict, device: torch.device) -> dict[str, Any]:
        self.device, self.dtype = device, compute_dtype(ds_config)
        p = self.args.perceptual
        if p.vgg:
            self.lpips = build_lpips(p.vgg, p.lpips).to(device)
        engines = {}
        g = self.args.gan
        if g.weight:
            with self.init_context():
                module = PatchDiscriminator3d(g.discriminator)
            engines["discriminator"] = gan.build_engine(module, gan.engine_config(ds_config, g.lr, g.betas))
            self.attach_discriminator(engines["discriminator"], device, self.dtype)
        if self.args.eval.every:
            metric_net = self.lpips if p.vgg and p.vgg != RANDOM else None
            self.evaluator = Evaluator(self.args.eval, self.cfg.data, self.cfg.schedule.seed, metric_net)
        return engines

    def attach_discriminator(self, engine, device: torch.device, dtype: torch.dtype) -> None:
        """Use ``engine`` (forward, backward, step; ``.module``) as the discriminator, with a frozen plain
        replica for the generator's adversarial term (see :mod:`megavg.tasks.gan`)."""
        self.disc = engine
        self.disc_replica = PatchDiscriminator3d(self.args.gan.discriminator).to(device, dtype)
        self.disc_replica.requires_grad_(False)

    def parallelize(self, model: nn.Module, sp_group) -> nn.Module:
        return apply_temporal_sp(model, sp_group)

    def reconstruct(self, model: nn.Module, video: torch.Tensor, sp_group) -> torch.Tensor:
        """The full reconstruction (float) of ``video`` on every rank."""
        if sp_group is None:
            return model(video).float()
        # this rank's whole chunks in, every rank's reconstruction gathered back (SP-sum grads)
        local = shard_time(video, unwrap(model).frame_chunk, sp_group)  # B,3,T_local,H,W
        return gather_time(model(local), sp_group).float()

    def loss(self, model: nn.Module, batch: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
        video = batch["video"].to(ctx.device, ctx.dtype)  # B,3,T,H,W
        latents: list[torch.Tensor] = []  # the encoder's output (a recompute would append it again)
        hook = unwrap(model).encoder.register_forward_hook(lambda m, i, out: latents.append(out.detach()))
        try:
            recon = self.reconstruct(model, video, ctx.sp_group)
        finally:
            hook.remove()
        target = video.float()
        l1 = F.l1_loss(recon, target)
        mse = F.mse_loss(recon, target)
        terms = {"l1": l1, "mse": mse, "latent_std": latents[0].float().std()}
        rec = self.args.l1_weight * l1 + self.args.mse_weight * mse
        p = self.args.perceptual
        if p.weight:
            frames = sample_frames(video.shape[2], p.frames, ctx.generator)
            terms["perceptual"] = video_distance(self.lpips, recon, target, frames)
            rec = rec + p.weight * terms["perceptual"]
        if not self.args.gan.weight or ctx.step < self.args.gan.start_step:
            return {"loss": rec, **terms}
        terms |= self.discriminator_step(target, recon.detach(), ctx.dtype)
        return {**self.generator_loss(recon, rec, ctx.dtype), **terms}

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, dtype) -> dict[str, torch.Tensor]:
        """One backward + step of the discriminator engine on real and reconstructed clips.

        Every rank of an SP group computes the same loss on the same clips; the engine averages the
        identical copies with the other data-parallel ranks' (no SP factor, unlike the generator)."""
        logits = self.disc(torch.cat([real, fake]).to(dtype)).float()  # 2B,1,T',H',W'
        logits_real, logits_fake = logits.chunk(2)
        d_loss = gan.discriminator_loss(logits_real, logits_fake, self.args.gan.loss)
        self.disc.backward(d_loss)
        self.disc.step()
        gan.copy_weights(self.disc.module, self.disc_replica)
        return {
            "d_loss": d_loss.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }

    def generator_loss(self, recon: torch.Tensor, rec: torch.Tensor, dtype) -> dict[str, torch.Tensor]:
        """rec + weight * lambda * L_adv, as a scalar whose gradient reaches the generator only through
        ``recon`` (the discriminator's parameters get none)."""
        g = self.args.gan
        g_adv = gan.generator_loss(self.disc_replica(recon.to(dtype)).float(), g.loss)
        # Only the two small graphs above recon are walked (and freed); the generator's stays for backward.
        (grad_rec,) = torch.autograd.grad(rec, recon)
        (grad_adv,) = torch.autograd.grad(g_adv, recon)
        lam = gan.adaptive_weight(grad_rec, grad_adv, g.max_adaptive) if g.adaptive else torch.ones(())
        weight = g.weight * lam.to(recon.device)
        total = gan.through_output(recon, rec + weight * g_adv, grad_rec + weight * grad_adv)
        return {"loss": total, "g_adv": g_adv.detach(), "gan_weight": weight}

    def on_step_end(self, model: nn.Module, step: int, metrics) -> None:
        if self.evaluator is not None and self.evaluator.due(step):
            from megavg.parallel import state

            sp_group = state.get_sequence_parallel_group() if self.cfg.parallel.sp_size > 1 else None
            run = lambda video: self.reconstruct(model, video.to(self.dtype), sp_group)  # noqa: E731
            self.evaluator.run(run, step, metrics, self.device)

    def flop_inputs(self, batch: dict) -> tuple:
        """The autoencoder's input (``video`` [B, 3, T, H, W]): the step FLOPs count DC-AE-V's encode +
        decode (forward and backward); the perceptual network and the discriminator of the later
        phases are not model FLOPs and are not counted."""
        return (tuple(batch["video"].shape),)

    def tokens(self, batch: dict) -> int:
        return batch["video"][:, 0].numel()  # pixels x frames
