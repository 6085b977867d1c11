"""The fast runner paths vs diffusers' WanPipeline loop on diffusers' own transformer; step caching."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from megavg.infer import sampling
from megavg.models import build
from megavg.models.wan.state_dict_adapter import to_megavg
from tests.infer.test_sampling import assert_rel_close, reference, unipc
from tests.models.wan_reference import diffusers_forward, random_diffusers

STEPS, GUIDANCE, SHIFT = 5, 5.0, 5.0


@pytest.fixture(scope="module", params=["t2v", "i2v"])
def pair(request):
    """(diffusers WanTransformer3DModel, the megavg model with the same weights, inputs)."""
    preset = f"wan-tiny-{request.param}"
    ref = random_diffusers(preset, seed=3)
    with torch.no_grad():  # random_diffusers' weights are large: tame them so 5 steps stay well scaled
        for p in ref.parameters():
            p.mul_(0.5)
    model = build(preset).eval()
    model.load_state_dict(to_megavg(ref.state_dict()), strict=True)
    args = model.args
    gen = torch.Generator().manual_seed(4)
    noise = torch.randn(1, args.out_channels, 2, 4, 6, generator=gen)
    text = torch.zeros(1, sampling.TEXT_TOKENS, args.text_dim)
    text[:, :6] = torch.randn(1, 6, args.text_dim, generator=gen)
    negative = torch.zeros_like(text)
    negative[:, :3] = torch.randn(1, 3, args.text_dim, generator=gen)
    condition = image = None
    if args.is_i2v:
        condition = torch.randn(1, args.in_channels - args.out_channels, 2, 4, 6, generator=gen)
        image = torch.randn(1, 257, args.image_dim, generator=gen)
    return ref, model, (noise, text, negative, condition, image)


class _Diffusers(torch.nn.Module):
    """diffusers' transformer called the way the reference loop calls a model."""

    def __init__(self, ref):
        super().__init__()
        self.ref = ref

    def forward(self, latents, timestep, text, image=None):
        return diffusers_forward(self.ref, latents, timestep, text, image)


@pytest.fixture(scope="module")
def expected(pair):
    """diffusers' loop on diffusers' transformer (computed once per preset)."""
    ref, _, (noise, text, negative, condition, image) = pair
    out = reference(_Diffusers(ref), unipc(SHIFT), noise, text, negative, GUIDANCE, STEPS, condition, image)
    assert out.abs().max() > 0.1
    return out


@pytest.mark.parametrize(
    "options",
    [{}, {"cfg_batch": False}, {"reuse_context": False}],
    ids=["default", "sequential", "no-context-cache"],
)
def test_fast_paths_match_diffusers_loop(pair, expected, options):
    """sample()'s batched CFG and reused cross-attention keys/values (the defaults), and each without the
    other, stay within 1e-5 relative of diffusers' loop on diffusers' transformer (fp32). I2V (image
    keys/values) runs the defaults only, to keep the suite short."""
    ref, model, (noise, text, negative, condition, image) = pair
    if options and image is not None:
        pytest.skip("the single-option variants run on T2V")
    stats: dict = {}
    actual = sampling.sample(
        model, noise, text, negative, steps=STEPS, guidance=GUIDANCE, shift=SHIFT, condition=condition,
        image=image, progress=False, stats=stats, **options,
    )  # fmt: skip
    assert stats["mode"] == ("sequential" if options.get("cfg_batch") is False else "batched")
    assert_rel_close(actual, expected)


def test_context_cache_is_computed_once(pair):
    """With the defaults the text/image key-value projections run once per sample, not per step."""
    _, model, (noise, text, negative, condition, image) = pair
    calls = []
    hook = model.blocks[0].cross_attn.k.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        for reuse in (True, False):
            sampling.sample(
                model, noise, text, negative, steps=STEPS, guidance=GUIDANCE, shift=SHIFT,
                condition=condition, image=image, progress=False, reuse_context=reuse,
            )  # fmt: skip
    finally:
        hook.remove()
    assert calls == [2] + [2] * STEPS  # reused: once (cond + uncond rows); not reused: every step


@pytest.mark.parametrize("method", ["fbcache", "teacache"])
def test_step_cache_skips_and_counts(pair, method, caplog):
    """Threshold 0 never skips (output equals the uncached one); a huge threshold skips every step but
    the first; the logged count equals the block-stack runs that did not happen (counted by a hook)."""
    _, model, (noise, text, negative, condition, image) = pair
    if image is not None:
        pytest.skip("step caching does not depend on the condition kind: T2V only (suite budget)")
    common = dict(
        steps=STEPS, guidance=GUIDANCE, shift=SHIFT, condition=condition, image=image, progress=False
    )
    plain = sampling.sample(model, noise, text, negative, **common)
    stats: dict = {}
    exact = sampling.sample(
        model, noise, text, negative, cache=method, cache_threshold=0.0, stats=stats, **common
    )
    assert stats["skipped"] == 0 and stats["calls"] == STEPS
    torch.testing.assert_close(exact, plain, rtol=0, atol=0)
    ran = []
    hook = model.blocks[-1].register_forward_hook(lambda *_: ran.append(1))
    try:
        with caplog.at_level(logging.INFO, logger="megavg.infer.sampling"):
            cached = sampling.sample(
                model, noise, text, negative, cache=method, cache_threshold=1e9, stats=stats, **common
            )
    finally:
        hook.remove()
    assert stats["skipped"] == STEPS - 1 and len(ran) == 1
    assert f"skipped {STEPS - 1} of {STEPS} steps" in caplog.text
    assert not torch.allclose(cached, plain)


@pytest.mark.slow  # compiling the tiny blocks with inductor takes ~1 min of CPU
def test_compiled_blocks_match_and_are_restored():
    """compile=True: each block compiled while sampling, same output as eager (within 1e-5), blocks
    eager again afterwards."""
    torch.manual_seed(0)
    model = build("wan-tiny-t2v").eval()
    noise = torch.randn(1, 4, 2, 4, 6, generator=torch.Generator().manual_seed(5))
    text = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(6))
    common = dict(steps=3, guidance=GUIDANCE, shift=SHIFT, progress=False)
    eager = sampling.sample(model, noise, text, **common)
    stats: dict = {}
    compiled = sampling.sample(model, noise, text, compile=True, stats=stats, **common)
    assert_rel_close(compiled, eager)
    assert all(block._compiled_call_impl is None for block in model.blocks)
    assert stats["first_step_s"] > stats["step_s"]  # compiling happened in the first step


class _Branches(_Diffusers):
    """diffusers' transformer under its First-Block Cache, each CFG branch in its own cache context (as
    WanPipeline runs it: ``cache_context("cond")`` / ``("uncond")``): the reference loop calls cond, then
    uncond, every step."""

    def __init__(self, ref):
        super().__init__(ref)
        self.calls = 0

    def forward(self, latents, timestep, text, image=None):
        name = ("cond", "uncond")[self.calls % 2]
        self.calls += 1
        with self.ref.cache_context(name):
            return super().forward(latents, timestep, text, image)


@pytest.mark.parametrize("cfg_batch", [True, False], ids=["batched", "sequential"])
def test_fbcache_keeps_each_branch_residual_like_diffusers(pair, cfg_batch):
    """fbcache with a threshold that skips every step after the first: each CFG branch adds *its own*
    cached residual (cond's, uncond's), as diffusers' FirstBlockCache with one cache context per branch
    does; within 1e-5 relative of it, batched (one cache over both rows) and sequential (one per call)."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    ref, model, (noise, text, negative, condition, image) = pair
    if image is not None:
        pytest.skip("T2V only (suite budget)")
    cached = copy.deepcopy(ref)
    apply_first_block_cache(cached, FirstBlockCacheConfig(threshold=1e9))
    expected = reference(_Branches(cached), unipc(SHIFT), noise, text, negative, GUIDANCE, STEPS)
    stats: dict = {}
    actual = sampling.sample(
        model, noise, text, negative, steps=STEPS, guidance=GUIDANCE, shift=SHIFT, progress=False,
        cfg_batch=cfg_batch, cache="fbcache", cache_threshold=1e9, stats=stats,
    )  # fmt: skip
    assert stats["skipped"] == (STEPS - 1) * (1 if cfg_batch else 2)
    assert_rel_close(actual, expected)
