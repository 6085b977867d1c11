"""Wan 2.2 A14B expert training: sigma drawn only from one expert's timestep range (the shifted schedule
truncated to it), and the I2V-A14B expert (no CLIP tokens) fed its condition channels alone."""

from __future__ import annotations

import pytest
import torch

from megavg.infer.sampling import shift_sigmas
from megavg.tasks.flow_matching import sample_sigmas
from megavg.utils.errors import UserError
from tests.tasks.test_adapt import ctx, make_task

SHIFT = 8.0


def test_full_range_is_the_plain_shifted_schedule():
    u = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_sigmas(u, SHIFT, (0.0, 1.0)), shift_sigmas(u, SHIFT))


@pytest.mark.parametrize("timestep_range", [(0.875, 1.0), (0.0, 0.875), (0.9, 1.0)])
def test_truncated_range_matches_rejection_sampling(timestep_range):
    """Quantiles equal those of plain shifted sigmas kept only inside the range (rejection sampling)."""
    low, high = timestep_range
    gen = torch.Generator().manual_seed(1)
    ours = sample_sigmas(torch.rand(200_000, generator=gen), SHIFT, timestep_range)
    assert ours.min() >= low - 1e-6 and ours.max() <= high + 1e-6
    plain = shift_sigmas(torch.rand(2_000_000, generator=gen, dtype=torch.float64), SHIFT)
    kept = plain[(plain >= low) & (plain < high)].float()
    q = torch.linspace(0.05, 0.95, 19)
    torch.testing.assert_close(torch.quantile(ours, q), torch.quantile(kept[:200_000], q), atol=5e-3, rtol=0)


def test_task_feeds_only_the_experts_timesteps():
    task = make_task(
        "adapt_lora",
        "model.preset=wan-tiny-student-t2v",
        "task.args.rank=4",
        "task.args.timestep_range=[0.875,1.0]",
    )
    model = task.build_model()
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[1].clone()))
    batch = {"latents": torch.randn(8, 8, 1, 2, 2), "text": torch.randn(8, 3, 32)}
    task.loss(model, batch, ctx())
    assert seen[0].min() >= 875 and seen[0].max() <= 1000


def test_bad_range_is_a_config_error():
    task = make_task("flow_matching", "model.preset=wan-tiny-t2v", "task.args.timestep_range=[0.9,0.5]")
    with pytest.raises(UserError, match="timestep_range"):
        task.validate()


def test_i2v_a14b_expert_takes_the_condition_without_clip_tokens():
    task = make_task("flow_matching", "model.preset=wan-tiny-i2v-a14b")
    model = task.build_model()
    seen = []
    model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0].shape, kwargs["image"])), with_kwargs=True
    )
    batch = {
        "latents": torch.randn(2, 4, 1, 4, 4),
        "text": torch.randn(2, 3, 32),
        "condition": torch.randn(2, 8, 1, 4, 4),
    }
    task.loss(model, batch, ctx())
    assert seen == [(torch.Size([2, 12, 1, 4, 4]), None)]
