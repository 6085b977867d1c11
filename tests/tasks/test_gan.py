"""GAN pieces: loss values against hand formulas, and the DC-AE-V task's generator gradient against a plain
re-computation (rec + weight * lambda * L_adv with the VQGAN-style ratio, lambda detached) with the
discriminator a plain module stepped by SGD."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import megavg.models
from megavg.metrics.perceptual import RANDOM, build_lpips, sample_frames, video_distance
from megavg.models.dcaev.discriminator import PatchDiscriminator3d
from megavg.tasks import gan, task_module
from megavg.tasks.base import StepContext
from megavg.train.config import load_config
from megavg.utils.schema import from_dict

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.3, 1.0])


def test_hinge_losses_by_hand():
    # 1 - real = [-1, 0.5, 2] -> relu mean 2.5/3; 1 + fake = [-1, 1.3, 2] -> relu mean 3.3/3
    assert gan.discriminator_loss(REAL, FAKE, "hinge").item() == pytest.approx(0.5 * (2.5 / 3 + 3.3 / 3))
    assert gan.generator_loss(FAKE, "hinge").item() == pytest.approx(-(-2.0 + 0.3 + 1.0) / 3)


def test_non_saturating_losses_by_hand():
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    d = 0.5 * (
        sum(-math.log(sig(r)) for r in REAL.tolist()) / 3
        + sum(-math.log(1 - sig(f)) for f in FAKE.tolist()) / 3
    )
    g = sum(-math.log(sig(f)) for f in FAKE.tolist()) / 3
    assert gan.discriminator_loss(REAL, FAKE, "non_saturating").item() == pytest.approx(d, rel=1e-6)
    assert gan.generator_loss(FAKE, "non_saturating").item() == pytest.approx(g, rel=1e-6)


def test_adaptive_weight_and_clamp():
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.5])
    assert gan.adaptive_weight(a, b, 1e4).item() == pytest.approx(5 / (0.5 + 1e-4))
    assert gan.adaptive_weight(a, torch.zeros(2), 7.0).item() == 7.0


class PlainEngine:
    """Stands in for the discriminator's DeepSpeed engine: forward, backward, step (SGD)."""

    def __init__(self, module):
        self.module = module
        self.opt = torch.optim.SGD(module.parameters(), lr=0.1)

    def __call__(self, x):
        return self.module(x)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def make_task(*overrides):
    small = ["task.args.gan.discriminator.channels=8", "task.args.gan.discriminator.layers=2"]
    cfg = load_config(None, ["model.preset=dc-ae-v-tiny", *small, *overrides])
    module = task_module("dcaev_recon")
    return module.Task(from_dict(module.Args, cfg.task.args, "task.args"), cfg)


def ctx(step):
    return StepContext(step, torch.Generator().manual_seed(5), torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("kind", ["hinge", "non_saturating"])
def test_generator_gradient_is_rec_plus_adaptive_adversarial(kind):
    task = make_task(
        "task.args.gan.weight=0.5", f"task.args.gan.loss={kind}", "task.args.perceptual.weight=0.7",
        "task.args.perceptual.frames=2",
    )  # fmt: skip
    task.lpips = build_lpips(RANDOM)
    disc = PatchDiscriminator3d(task.args.gan.discriminator)
    task.attach_discriminator(PlainEngine(disc), torch.device("cpu"), torch.float32)
    model = megavg.models.build("dc-ae-v-tiny")
    ref_model, disc_before = copy.deepcopy(model), copy.deepcopy(disc)
    video = torch.rand(1, 3, 8, 32, 32) * 2 - 1

    terms = task.loss(model, {"video": video}, ctx(3))
    terms["loss"].backward()
    assert all(p.grad is None for p in disc.parameters())  # the generator's loss leaves D untouched

    # plain re-computation: D's step on (real, fake), then rec + 0.5 * lambda * L_adv with the stepped D
    recon = ref_model(video)
    logits = disc_before(torch.cat([video, recon.detach()]))
    d_loss = gan.discriminator_loss(*logits.chunk(2), kind)
    torch.testing.assert_close(terms["d_loss"], d_loss.detach())
    frames = sample_frames(8, 2, torch.Generator().manual_seed(5))
    rec = (
        F.l1_loss(recon, video)
        + F.mse_loss(recon, video)
        + 0.7 * video_distance(task.lpips, recon, video, frames)
    )
    g_adv = gan.generator_loss(disc(recon), kind)
    g_rec_y = torch.autograd.grad(rec, recon, retain_graph=True)[0]
    g_adv_y = torch.autograd.grad(g_adv, recon, retain_graph=True)[0]
    lam = (g_rec_y.norm() / (g_adv_y.norm() + 1e-4)).detach()
    total = rec + 0.5 * lam * g_adv
    total.backward()
    torch.testing.assert_close(terms["loss"], total.detach())
    torch.testing.assert_close(terms["gan_weight"], 0.5 * lam)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_before_start_step_no_adversarial_term_and_discriminator_idle():
    task = make_task("task.args.gan.weight=0.5", "task.args.gan.start_step=10")
    disc = PatchDiscriminator3d(task.args.gan.discriminator)
    before = copy.deepcopy(disc.state_dict())
    task.attach_discriminator(PlainEngine(disc), torch.device("cpu"), torch.float32)
    model = megavg.models.build("dc-ae-v-tiny")
    terms = task.loss(model, {"video": torch.rand(1, 3, 8, 32, 32) * 2 - 1}, ctx(9))
    assert set(terms) == {"loss", "l1", "mse", "latent_std"}
    assert all(torch.equal(before[k], v) for k, v in disc.state_dict().items())
    assert set(task.loss(model, {"video": torch.zeros(1, 3, 8, 32, 32)}, ctx(10))) >= {"d_loss", "g_adv"}


def test_latent_std_is_logged_and_the_loss_unchanged():
    """``latent_std`` is the std of the unscaled latents (the model's own ``encode``, computed here on its
    own), logged beside L1 + MSE; the loss is still exactly L1 + MSE of the reconstruction."""
    task = make_task()
    torch.manual_seed(0)
    model = megavg.models.build("dc-ae-v-tiny")
    with torch.no_grad():
        model.encoder.project_out.weight.mul_(7.0)  # a latent scale far from 1
    video = torch.rand(1, 3, 8, 16, 16) * 2 - 1
    terms = task.loss(model, {"video": video}, ctx(0))
    with torch.no_grad():
        expected = model.encode(video).std()
        recon = model(video)
    torch.testing.assert_close(terms["latent_std"], expected)
    assert terms["latent_std"] > 1.0
    torch.testing.assert_close(terms["loss"], F.l1_loss(recon, video) + F.mse_loss(recon, video))
    assert not model.encoder._forward_hooks  # the hook does not outlive the step
