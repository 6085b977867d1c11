"""Flow-matching samplers for the Wan family: multistep UniPC (bh2, order 2) and Euler, with CFG.

    latents = sample(model, noise, text, negative_text, steps=50, guidance=5.0, shift=5.0)

The model predicts the flow velocity v = eps - x0 at x_sigma = (1 - sigma) x0 + sigma eps and takes
``timestep = 1000 sigma`` (see :mod:`megavg.tasks.flow_matching`). Schedules and updates reproduce
diffusers' ``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
flow_shift=shift)`` (defaults: solver_order 2, predict_x0, bh2, lower_order_final, final sigma 0) and
``FlowMatchEulerDiscreteScheduler(shift=shift)`` as the Wan pipelines drive them; the tests check that.
This module is part of the standalone runner: torch (and optionally tqdm) only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from megavg.conditioning.text import TEXT_TOKENS, pad_text
from megavg.infer.step_cache import METHODS as CACHE_METHODS
from megavg.infer.step_cache import StepCache
from megavg.layers.linear import uses_transformer_engine
from megavg.utils.device import agree
from megavg.utils.errors import UserError
from megavg.utils.logging import progress

log = logging.getLogger("megavg.infer.sampling")

NUM_TRAIN_TIMESTEPS = 1000
SOLVERS = ("unipc", "euler")


# ----------------------------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class Schedule:
    """``timesteps`` [N] (the model's timestep input per step) and ``sigmas`` [N + 1] float32, last 0."""

    timesteps: torch.Tensor
    sigmas: torch.Tensor


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow shift: sigma -> shift sigma / (1 + (shift - 1) sigma); more steps near noise for shift > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _linspace(start: float, stop: float, num: int) -> torch.Tensor:
    """float64 ``numpy.linspace`` (start + i step; torch.linspace rounds differently, which moves integer
    timesteps such as 667 -> 666)."""
    return torch.from_numpy(np.linspace(start, stop, num))


def unipc_schedule(steps: int, shift: float, num_train: int = NUM_TRAIN_TIMESTEPS) -> Schedule:
    """UniPC flow sigmas: ``steps`` points of linspace(1, 1/num_train, steps + 1) (the last dropped),
    shifted; a first sigma of exactly 1 is lowered by 1e-6 (log-SNR stays finite); integer timesteps
    ``int(1000 sigma)`` (truncated, from the float64 sigmas); then the final sigma 0 is appended."""
    base = _linspace(1.0, 1.0 / num_train, steps + 1)[:-1]
    sigmas = shift_sigmas(base, shift)
    if abs(sigmas[0].item() - 1.0) < 1e-6:
        sigmas[0] -= 1e-6
    timesteps = (sigmas * num_train).to(torch.int64)  # truncation towards zero
    return Schedule(timesteps, torch.cat([sigmas, sigmas.new_zeros(1)]).float())


def euler_schedule(steps: int, shift: float, num_train: int = NUM_TRAIN_TIMESTEPS) -> Schedule:
    """Flow-match Euler sigmas as diffusers builds them: linspace from 1 to the *shifted* 1/num_train
    (its table minimum), shifted again; float timesteps 1000 sigma; final sigma 0 appended."""
    lowest = shift_sigmas(torch.tensor(1.0 / num_train, dtype=torch.float32), shift).item()
    base = _linspace(1.0, lowest, steps)
    sigmas = shift_sigmas(base, shift).float()
    return Schedule(sigmas * num_train, torch.cat([sigmas, sigmas.new_zeros(1)]))


# ------------------------------------------------------------------------------------------------- solvers
def _log_snr(sigma: float) -> float:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma (flow matching); +inf at sigma 0 (clean)."""
    return math.inf if sigma == 0.0 else math.log(1.0 - sigma) - math.log(sigma)


class EulerSolver:
    """x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v_i."""

    def __init__(self, sigmas: torch.Tensor):
        self.sigmas = sigmas

    def step(self, i: int, velocity: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x + (self.sigmas[i + 1] - self.sigmas[i]).item() * velocity


class UniPCSolver:
    """Multistep UniPC in x0-prediction, order 2, bh2 (B(h) = expm1(-h) for log-SNR step h).

    Step i turns the velocity at x_i into x0_i = x_i - sigma_i v_i, *corrects* x_i with UniC (which uses
    x0_i, so costs no extra model call), then *predicts* x_{i+1} with UniP. The order warms up (1 at the
    first step) and drops to 1 at the last step, whose target sigma 0 makes UniP return x0 itself.
    """

    def __init__(self, sigmas: torch.Tensor, order: int = 2):
        self.sigmas = [float(s) for s in sigmas]  # the float32 schedule values, as exact float64
        self.lambdas = [_log_snr(s) for s in self.sigmas]
        self.order, self.steps = order, len(self.sigmas) - 1
        self.x0s: list[torch.Tensor] = []  # x0 predictions of the last ``order`` steps, newest last
        self.last: tuple[torch.Tensor, int] | None = None  # (x_{i-1} after correction, order used)

    def step(self, i: int, velocity: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x0 = x - self.sigmas[i] * velocity
        if self.last is not None:
            x = self.correct(i, x0, *self.last)
        self.x0s = (self.x0s + [x0])[-self.order :]
        order = min(self.order, self.steps - i, len(self.x0s))
        self.last = (x, order)
        return self.predict(i, x, order)

    def predict(self, i: int, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP: x_{i+1} from x_i, x0_i and (order 2) the difference to x0_{i-1}; rho fixed at 1/2."""
        x_next, h, scale = self._first_order(i, i + 1, x, self.x0s[-1])
        if order == 2:
            r = (self.lambdas[i - 1] - self.lambdas[i]) / h
            x_next = x_next - scale * 0.5 * (self.x0s[-2] - self.x0s[-1]) / r
        return x_next

    def correct(self, i: int, x0_new: torch.Tensor, x_prev: torch.Tensor, order: int) -> torch.Tensor:
        """UniC: redo the step i-1 -> i from the corrected x_{i-1}, now also using x0_i (the model output
        at the predicted x_i); ``order`` is the order the predictor used for that step."""
        m0 = self.x0s[-1]  # x0_{i-1}
        x_i, h, scale = self._first_order(i - 1, i, x_prev, m0)
        if order == 1:
            return x_i - scale * 0.5 * (x0_new - m0)
        r = (self.lambdas[i - 2] - self.lambdas[i - 1]) / h
        rho_prev, rho_new = _corrector_weights(h, r)
        return x_i - scale * (rho_prev * (self.x0s[-2] - m0) / r + rho_new * (x0_new - m0))

    def _first_order(self, src: int, dst: int, x: torch.Tensor, x0: torch.Tensor):
        """First-order (DDIM-like) move of x from sigma_src to sigma_dst with prediction x0.

        Returns (x_dst, h, alpha_dst B(h)) with h = lambda_dst - lambda_src, B(h) = expm1(-h) (bh2).
        """
        h = self.lambdas[dst] - self.lambdas[src]
        b_h = math.expm1(-h)  # = h phi_1 in the x0 parametrisation; -1 when sigma_dst = 0
        alpha_dst = 1.0 - self.sigmas[dst]
        return (self.sigmas[dst] / self.sigmas[src]) * x - alpha_dst * b_h * x0, h, alpha_dst * b_h


def _corrector_weights(h: float, r: float) -> tuple[float, float]:
    """Order-2 UniC weights (rho for the older x0 difference, rho for the new one).

    With hh = -h and B(h) = expm1(hh): g_1 = (expm1(hh)/hh - 1) / B(h), g_2 = 2 ((expm1(hh)/hh - 1)/hh - 1/2)
    / B(h) (UniPC's phi-function coefficients); rho solves [[1, 1], [r, 1]] rho = [g_1, g_2].
    """
    hh = -h
    b_h = math.expm1(hh)
    phi = b_h / hh - 1.0
    g1 = phi / b_h
    g2 = 2.0 * (phi / hh - 0.5) / b_h
    rho_prev = (g1 - g2) / (1.0 - r)
    return rho_prev, g1 - rho_prev


def make_solver(name: str, steps: int, shift: float) -> tuple[Schedule, EulerSolver | UniPCSolver]:
    """The schedule and a fresh solver for ``name`` in :data:`SOLVERS`."""
    if name == "unipc":
        schedule = unipc_schedule(steps, shift)
        return schedule, UniPCSolver(schedule.sigmas)
    if name == "euler":
        schedule = euler_schedule(steps, shift)
        return schedule, EulerSolver(schedule.sigmas)
    raise UserError(f"sampler: unknown solver {name!r} (choose from {', '.join(SOLVERS)})")


# ------------------------------------------------------------------------------------------ conditioning
def guide(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + guidance (cond - uncond)."""
    return uncond + guidance * (cond - uncond)


def prepare_text(
    text: torch.Tensor | Sequence[torch.Tensor],
    mask: torch.Tensor | None,
    batch: int,
    tokens: int = TEXT_TOKENS,
) -> torch.Tensor:
    """Text-encoder states as the Wan DiT sees them, broadcast to ``batch``: [B, max(L, tokens), D].

    Padding is :func:`megavg.conditioning.text.pad_text`, the function training's batches go through too
    (``text`` is a [B, L, D] tensor with an optional ``mask``, or a list of unpadded [L_i, D] tensors).
    """
    text = pad_text(text, mask, tokens)
    if text.shape[0] not in (1, batch):
        raise UserError(f"sampler: text batch {text.shape[0]} does not match noise batch {batch}")
    return text.expand(batch, -1, -1)


def _check_inputs(noise: torch.Tensor, condition: torch.Tensor | None, steps: int, shift: float) -> None:
    if noise.ndim != 5:
        raise UserError(f"sampler: noise must be [B, C, T, H, W], got {tuple(noise.shape)}")
    if steps < 1:
        raise UserError(f"sampler: steps must be >= 1, got {steps}")
    if shift <= 0:
        raise UserError(f"sampler: shift must be > 0, got {shift}")
    if condition is not None and (
        condition.ndim != 5 or condition.shape[0] != noise.shape[0] or condition.shape[2:] != noise.shape[2:]
    ):
        raise UserError(
            f"sampler: condition {tuple(condition.shape)} must be [B, C', T, H, W] like noise "
            f"{tuple(noise.shape)}"
        )


def _progress(total: int, enabled: bool) -> Callable[[int], None]:
    """A per-step callback: a tqdm bar on a terminal, else a log line every 10 s (``progress``)."""
    bar = progress(total, "sampling", "step", enabled=enabled)

    def update(i: int) -> None:
        bar.update(1)
        if i + 1 == total:
            bar.close()

    return update


# ------------------------------------------------------------------------------------------ execution
def cfg_fits_batched(model: torch.nn.Module, noise: torch.Tensor, text_tokens: int = TEXT_TOKENS) -> bool:
    """Whether cond + uncond fit as one batch: always on the CPU; on CUDA when the extra activations of
    the doubled batch (per block: residual, normed copy, q, k, v, attention out, FFN hidden; plus the
    cross-attention keys/values) take under 80 % of the free memory. Per rank: the free memory differs
    between ranks, so multi-process callers agree the answer (:func:`_cfg_mode`)."""
    free = free_memory(noise.device)
    if free is None:
        return True
    args = model.args
    tokens = model.num_tokens(noise.shape) * noise.shape[0]
    size = next(model.parameters()).element_size()
    extra = (tokens * (6 * args.dim + args.ffn_dim) + 2 * text_tokens * args.dim * args.num_layers) * size
    return extra < 0.8 * free


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA ``device`` (the caching allocator's idle blocks count as used); None elsewhere."""
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None


@contextlib.contextmanager
def regional_compile(model: torch.nn.Module, enabled: bool):
    """``torch.compile`` each transformer block (static shapes) while inside; the model is restored after.

    Refused for Transformer Engine linears: TE keeps its modules' ``forward`` out of dynamo
    (``no_torch_dynamo``), so each block would split into one graph per linear with nothing fused."""
    if enabled and uses_transformer_engine(model.blocks[0]):
        raise UserError(
            "--compile: this DiT runs Transformer Engine linears, which TE keeps out of torch.compile "
            "(each block would split into one graph per linear); run without --compile, or on an "
            "environment without Transformer Engine (torch linears, the same weights)"
        )
    blocks = list(model.blocks) if enabled else []
    saved = [block._compiled_call_impl for block in blocks]
    for block in blocks:
        block.compile(dynamic=False)
    try:
        yield
    finally:
        for block, previous in zip(blocks, saved):
            block._compiled_call_impl = previous


@dataclass
class _Call:
    """One model call per step: its text states, CLIP tokens, channel condition, context and cache."""

    text: torch.Tensor
    image: torch.Tensor | None
    extra: torch.Tensor | None
    context: list | None = None
    cache: StepCache | None = None


class GuidedVelocity:
    """The (guided) velocity at (x, t) as ``sample`` computes it.

    Modes: ``single`` (no guidance: one call), ``batched`` (cond and uncond stacked into one call of
    batch 2B), ``sequential`` (two calls), ``parallel`` (CFG-parallel: this rank of the two-rank
    ``cfg_group`` runs its own branch, the two velocities are all-gathered). Each gives the same numbers
    as the diffusers loop's cond-then-uncond forwards up to float rounding.
    """

    def __init__(self, model, cond, uncond, image, extra, guidance, mode, cfg_group=None):
        self.model, self.guidance, self.mode, self.cfg_group = model, guidance, mode, cfg_group
        if mode == "single":
            self.calls = [_Call(cond, image, extra)]
        elif mode == "batched":
            self.calls = [_Call(torch.cat([cond, uncond]), _twice(image), _twice(extra))]
        elif mode == "sequential":
            self.calls = [_Call(cond, image, extra), _Call(uncond, image, extra)]
        else:
            branch = torch.distributed.get_rank(cfg_group)  # rank 0 of the pair: cond, rank 1: uncond
            self.calls = [_Call((cond, uncond)[branch], image, extra)]

    def prepare(self, reuse_context: bool, cache: str, threshold: float, sp_group=None) -> None:
        """Project the cross-attention context once per call (``reuse_context``); attach step caches."""
        for call in self.calls:
            if reuse_context:
                call.context = self.model.encode_context(call.text, call.image)
            if cache != "none":
                call.cache = StepCache(cache, threshold, sp_group)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        outs = [self._run(call, x, t) for call in self.calls]
        if self.mode == "single":
            return outs[0]
        if self.mode == "batched":
            return guide(*outs[0].chunk(2), self.guidance)
        if self.mode == "parallel":
            both = [torch.empty_like(outs[0]) for _ in range(2)]
            torch.distributed.all_gather(both, outs[0].contiguous(), group=self.cfg_group)
            outs = both
        return guide(outs[0], outs[1], self.guidance)

    def _run(self, call: _Call, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dtype = call.text.dtype
        rows = call.text.shape[0]
        x = x.to(dtype).repeat(rows // x.shape[0], 1, 1, 1, 1)  # [rows, C, T, H, W]
        if call.extra is not None:
            x = torch.cat([x, call.extra], dim=1)
        timestep = t.expand(rows) if t.ndim == 0 else t.expand(rows, -1)  # [rows] or per token [rows, S]
        out = self.model(x, timestep, call.text, call.image, context=call.context, step_cache=call.cache)
        return out.float()

    def cache_report(self) -> tuple[int, int]:
        """(skipped, calls) summed over the step caches."""
        caches = [c.cache for c in self.calls if c.cache is not None]
        return sum(c.skipped for c in caches), sum(c.calls for c in caches)


def _twice(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else torch.cat([x, x])


def _cfg_mode(guidance: float, cfg_batch: bool | None, cfg_group, model, noise, model_group=None) -> str:
    """The CFG mode; an automatic batched/sequential choice is agreed over ``model_group`` (the ranks that
    run each model call together: one batched call and two sequential ones issue different ZeRO-3
    gathers and Ulysses all-to-alls), batched only when it fits on every rank."""
    if guidance <= 1:
        return "single"
    if cfg_group is not None:
        if torch.distributed.get_world_size(cfg_group) != 2:
            raise UserError("sampler: cfg_group must hold exactly two ranks (cond and uncond)")
        return "parallel"
    if cfg_batch is None:
        cfg_batch = cfg_fits_batched(model, noise)
        if model_group is not None:
            cfg_batch = agree(cfg_batch, every=True, group=model_group, device=noise.device)
    return "batched" if cfg_batch else "sequential"


# ------------------------------------------------------------------------------ Wan 2.2: experts, TI2V
class ExpertSwitch:
    """Wan 2.2 A14B: the high-noise expert's (guided) velocity while ``t >= boundary * 1000``, then the
    low-noise one's (diffusers' ``boundary_ratio``; the timesteps only decrease, so it switches once).

    Each expert's ``prepare`` (context projection, step cache) runs when it is first used, after
    ``activate(model)`` (if given) has placed it: a runner that cannot hold both on the GPU moves the
    high-noise expert off and the low-noise one on there."""

    def __init__(self, velocities: list[GuidedVelocity], boundary: float | None, prepare, activate=None):
        self.velocities, self.boundary, self.prepare, self.activate = velocities, boundary, prepare, activate
        self.ready: set[int] = set()

    def expert(self, t: torch.Tensor) -> int:
        """0 (high noise) or 1 (low noise) for step timestep ``t``, compared as diffusers does."""
        return int(self.boundary is not None and not bool(t >= self.boundary * NUM_TRAIN_TIMESTEPS))

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        i = self.expert(t)
        if i not in self.ready:
            if self.activate is not None:
                self.activate(self.velocities[i].model)
            self.prepare(self.velocities[i])
            self.ready.add(i)
        return self.velocities[i](x, t)

    def cache_report(self) -> tuple[int, int]:
        reports = [v.cache_report() for v in self.velocities]
        return sum(r[0] for r in reports), sum(r[1] for r in reports)


class FirstFrame:
    """TI2V-5B image conditioning (diffusers' ``expand_timesteps``): the image's latent frame ``latent``
    [B, C, 1, H, W] replaces frame 0 of what the model sees, that frame's tokens get timestep 0 (clean)
    while the others get the step's, and it replaces frame 0 of the result. The solver integrates the
    unreplaced latents, as the diffusers pipeline does."""

    def __init__(self, latent: torch.Tensor, patch_size: Sequence[int]):
        if patch_size[0] != 1:
            raise UserError(f"sampler: first_frame needs temporal patch 1, the model has {patch_size[0]}")
        self.latent, self.patch_size = latent, tuple(patch_size)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.latent.to(x), x[:, :, 1:]], dim=2)

    def model_input(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents with the image frame, per-token timesteps [1, S]: 0 on frame 0's tokens, else t)."""
        grid = [n // p for n, p in zip(x.shape[2:], self.patch_size)]  # tokens (T', H', W')
        per_token = torch.full(grid, float(t), dtype=torch.float32, device=x.device)
        per_token[0] = 0  # the first token frame: latent frame 0 (every Wan has temporal patch 1)
        return self.apply(x), per_token.flatten()[None]  # [1, S]

    def wrap(self, velocity: Callable) -> Callable:
        return lambda x, t: velocity(*self.model_input(x, t))


def _check_experts(model_2, boundary, guidance_2, first_frame, noise) -> None:
    if (model_2 is None) != (boundary is None):
        raise UserError("sampler: model_2 (the low-noise expert) and boundary come together")
    if boundary is not None and not 0 < boundary < 1:
        raise UserError(f"sampler: boundary must be in (0, 1), got {boundary}")
    if guidance_2 is not None and model_2 is None:
        raise UserError("sampler: guidance_2 is the low-noise expert's guidance; it needs model_2")
    if first_frame is not None and first_frame.shape != (*noise.shape[:2], 1, *noise.shape[3:]):
        raise UserError(
            f"sampler: first_frame {tuple(first_frame.shape)} must be [B, C, 1, H, W] like noise "
            f"{tuple(noise.shape)}"
        )


# ---------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample(
    model: torch.nn.Module,
    noise: torch.Tensor,
    text: torch.Tensor | Sequence[torch.Tensor],
    negative_text: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    steps: int,
    guidance: float,
    shift: float,
    solver: str = "unipc",
    condition: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    negative_text_mask: torch.Tensor | None = None,
    progress: bool = True,
    cfg_batch: bool | None = None,
    reuse_context: bool = True,
    compile: bool = False,
    cache: str = "none",
    cache_threshold: float = 0.05,
    cfg_group=None,
    sp_group=None,
    model_group=None,
    stats: dict | None = None,
    model_2: torch.nn.Module | None = None,
    boundary: float | None = None,
    guidance_2: float | None = None,
    first_frame: torch.Tensor | None = None,
    activate: Callable[[torch.nn.Module], None] | None = None,
) -> torch.Tensor:
    """Integrate the flow from ``noise`` [B, C, T, H, W] (sigma 1) to clean latents (float32).

    ``model(latents, timestep, text, image)`` is a Wan DiT predicting the velocity. Per step the model
    sees the current latents concatenated on channels with ``condition`` (I2V: [B, 4 mask + C, T, H, W]),
    the step's timestep and ``image`` (CLIP tokens [B, 257, 1280], I2V). With ``guidance > 1`` it runs a
    conditional and an unconditional forward (``negative_text``: give the null condition the model was
    trained with, the padded encoding of ``megavg.conditioning.text.NULL_CAPTION`` as ``generate`` does;
    None means all-zero text) and mixes them with :func:`guide`; otherwise one forward. Text goes
    through :func:`prepare_text`. The model runs in its parameters' dtype; the solver in float32.

    Speed (all exact but ``cache``): ``cfg_batch`` runs cond and uncond as one batch (None: when it fits,
    :func:`cfg_fits_batched`); ``reuse_context`` projects the cross-attention keys/values once
    (:meth:`Model.encode_context`); ``compile`` compiles each block (:func:`regional_compile`).
    ``cache`` in ``none``/``fbcache``/``teacache`` with ``cache_threshold`` skips the block stack on
    steps that barely change (:mod:`megavg.infer.step_cache`; approximate). Multi-process: a model
    under ``apply_ulysses`` (``sp_group``: its group, for the cache's decisions) and/or ``cfg_group``
    (two ranks, one CFG branch each); ``model_group``: the ranks that run each model call together
    (default ``sp_group``; ZeRO-3: the ranks that gather the parameters), over which an automatic
    ``cfg_batch`` is agreed. ``stats`` (a dict) receives ``first_step_s`` (includes compiling),
    ``step_s`` (mean of the others), ``mode``, ``skipped`` and ``calls``.

    Wan 2.2: ``model_2`` is the low-noise expert, used for steps with ``t < boundary * 1000`` (diffusers'
    ``boundary_ratio``) with guidance ``guidance_2`` (default ``guidance``); ``activate(expert)`` is
    called before an expert's first step (placement). ``first_frame`` [B, C, 1, H, W] is TI2V-5B's image
    latent (:class:`FirstFrame`: per-token timesteps, frame 0 clean).
    """
    _check_inputs(noise, condition, steps, shift)
    if cache not in CACHE_METHODS:
        raise UserError(f"sampler: unknown cache {cache!r} (choose from {', '.join(CACHE_METHODS)})")
    schedule, stepper = make_solver(solver, steps, shift)
    batch, device = noise.shape[0], noise.device
    dtype = next(model.parameters()).dtype
    _check_experts(model_2, boundary, guidance_2, first_frame, noise)
    guidance_2 = guidance if guidance_2 is None else guidance_2
    cond, uncond = _guidance_texts(
        text,
        text_mask,
        negative_text,
        negative_text_mask,
        max(guidance, guidance_2) > 1,
        batch,
        device,
        dtype,
    )
    extra = None if condition is None else condition.to(device, dtype)
    image = None if image is None else image.to(device, dtype)
    inputs = (cond, uncond, image, extra)
    experts = [(model, guidance)] + ([(model_2, guidance_2)] if model_2 is not None else [])
    velocities = [
        GuidedVelocity(
            m, *inputs, g, _cfg_mode(g, cfg_batch, cfg_group, m, noise, model_group or sp_group), cfg_group
        )
        for m, g in experts
    ]
    mode = velocities[0].mode
    velocity = ExpertSwitch(
        velocities, boundary, lambda v: v.prepare(reuse_context, cache, cache_threshold, sp_group), activate
    )
    frame = None if first_frame is None else FirstFrame(first_frame.to(device), model.args.patch_size)
    with regional_compile(model, compile), regional_compile(model_2, compile and model_2 is not None):
        x, times = _integrate(
            velocity if frame is None else frame.wrap(velocity), stepper, schedule, noise, progress
        )
    x = x if frame is None else frame.apply(x)
    _report(velocity, times, mode, cache, cache_threshold, stats)
    return x


def _guidance_texts(text, text_mask, negative, negative_mask, guided: bool, batch: int, device, dtype):
    """The padded cond context and, when any guidance is > 1, the uncond one (zeros without a negative)."""
    cond = prepare_text(text, text_mask, batch).to(device, dtype)
    if not guided:
        return cond, None
    if negative is None:
        return cond, torch.zeros_like(cond)
    return cond, prepare_text(negative, negative_mask, batch).to(device, dtype)


def _report(velocity, times: list[float], mode: str, cache: str, cache_threshold: float, stats) -> None:
    """Log the step cache's skips and fill ``stats`` (first step, mean of the others, mode, skips)."""
    skipped, calls = velocity.cache_report()
    if cache != "none":
        log.info(
            "step cache %s (threshold %g): skipped %d of %d steps", cache, cache_threshold, skipped, calls
        )
    if stats is not None:
        rest = times[1:]
        stats.update(first_step_s=times[0], step_s=sum(rest) / len(rest) if rest else times[0], mode=mode,
                     skipped=skipped, calls=calls)  # fmt: skip


def _integrate(velocity, stepper, schedule, noise, progress) -> tuple[torch.Tensor, list[float]]:
    """The solver loop; returns the latents and each step's wall time (read without a per-step sync:
    steps after the first are timed as one span and averaged)."""
    tick = _progress(len(schedule.timesteps), progress)
    x, device = noise.float(), noise.device
    times: list[float] = []
    start = time.perf_counter()
    for i, t in enumerate(schedule.timesteps.to(device)):
        x = stepper.step(i, velocity(x, t), x)
        tick(i)
        if i == 0:
            _sync(device)
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
    _sync(device)
    rest = len(schedule.timesteps) - 1
    times += [(time.perf_counter() - start) / max(rest, 1)] * rest  # none for a 1-step run
    return x, times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
