"""Candidate layouts of a run (SP degree x activation checkpointing x offload), their memory and speed,
ranked: the layouts that fit first, best (most samples per second) first, each with its config overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from megavg.models.registry import list_presets
from megavg.plan import cost, memory, model
from megavg.plan.spec import Layout, Run, offloads
from megavg.tasks.base import compute_dtype
from megavg.train.config import TrainConfig, load_config
from megavg.train.engine import deepspeed_config
from megavg.utils.errors import UserError

REPO = Path(__file__).resolve().parents[2]
BF16 = "configs/deepspeed/zero3_bf16.json"
OFFLOAD = "configs/deepspeed/zero3_bf16_offload.json"
TASKS = {"adapt_lora": "wan", "flow_matching": "wan", "dcaev_recon": "dcaev"}
FIT_FRACTION = 0.9  # of GPU memory; the rest: CUDA context, NCCL buffers, allocator fragmentation


@dataclass
class Request:
    """What the user asks: model, cluster, clip size, micro-batch per SP group, task."""

    preset: str
    nodes: int
    gpus_per_node: int
    gpu_memory_gib: float
    size: tuple[int, int]
    frames: int
    batch: int = 1
    task: str = "flow_matching"
    sp: int | None = None  # only this SP degree (default: every valid one)
    fp8: bool = False
    mfu: float = 0.35
    deepspeed: tuple[str, ...] = (BF16, OFFLOAD)  # candidate DeepSpeed JSONs
    checkpointing: tuple[bool, ...] = (False, True)
    config: str | None = None  # a training YAML: its task arguments (LoRA rank...) and model settings

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


def check(req: Request) -> None:
    """Reject bad requests with one clear line."""
    for name in ("nodes", "gpus_per_node", "frames", "batch"):
        if getattr(req, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(req, name)}")
    if req.gpu_memory_gib <= 0:
        raise UserError(f"--gpu-memory-gib: must be > 0, got {req.gpu_memory_gib}")
    if any(n < 1 for n in req.size):
        raise UserError(f"--size: height and width must be >= 1, got {req.size[0]} {req.size[1]}")
    if not 0 < req.mfu <= 1:
        raise UserError(f"--mfu: must be in (0, 1], got {req.mfu}")
    if req.task not in TASKS:
        raise UserError(f"--task: unknown task {req.task!r} (choose from {', '.join(TASKS)})")
    family = list_presets().get(req.preset)
    if family is None:
        raise UserError(
            f"--preset: unknown preset {req.preset!r} (known: {', '.join(sorted(list_presets()))})"
        )
    if family != TASKS[req.task]:
        raise UserError(f"--task {req.task}: needs a {TASKS[req.task]} preset, {req.preset} is {family}")


def overrides(req: Request, layout: Layout) -> list[str]:
    """The ``section.key=value`` overrides of ``python -m megavg.train`` for ``layout``."""
    out = [
        f"task.name={req.task}",
        f"model.preset={req.preset}",
        f"data.batch_size={req.batch}",
        f"parallel.sp_size={layout.sp}",
        f"parallel.deepspeed={layout.deepspeed}",
    ]
    if layout.checkpointing:
        out.append("model.activation_checkpointing=true")
    elif req.config:  # the config may turn it on
        out.append("model.activation_checkpointing=false")
    if TASKS[req.task] == "dcaev":
        out += [f"data.frames={req.frames}", f"data.size=[{req.size[0]}, {req.size[1]}]"]
    return out


def config(req: Request, layout: Layout) -> TrainConfig:
    """The training config of ``layout`` (``req.config`` under the layout's overrides; paths resolved
    against the repository if needed)."""
    cfg = load_config(resolve(req.config) if req.config else None, overrides(req, layout))
    path = Path(layout.deepspeed)
    if not path.is_file() and (REPO / path).is_file():
        cfg.parallel.deepspeed = str(REPO / path)
    return cfg


def resolve(path: str) -> Path:
    """``path`` as given, or relative to the repository when only that exists."""
    given = Path(path)
    return given if given.exists() or not (REPO / given).exists() else REPO / given


def sp_degrees(req: Request, facts: model.ModelFacts) -> list[int]:
    """SP degrees inside one node that divide the world and (Wan) the heads; (DC-AE-V) at most one per
    temporal chunk."""
    if req.sp is not None:
        if facts.heads and facts.heads % req.sp:
            raise UserError(
                f"--sp {req.sp}: does not divide the {facts.heads} attention heads of {req.preset}"
            )
        if req.gpus_per_node % req.sp:
            raise UserError(
                f"--sp {req.sp}: must divide --gpus-per-node {req.gpus_per_node} (SP stays in a node)"
            )
        if facts.family == "dcaev" and _chunks(req, facts) < req.sp:
            chunks = _chunks(req, facts)
            raise UserError(
                f"--sp {req.sp}: {req.frames} frames are {chunks} chunks of {facts.frame_chunk}, too few"
            )
        return [req.sp]
    found = []
    for sp in range(1, req.gpus_per_node + 1):
        if req.gpus_per_node % sp or (facts.heads and facts.heads % sp):
            continue
        if facts.family == "dcaev" and _chunks(req, facts) < sp:
            continue
        found.append(sp)
    return found


def _chunks(req: Request, facts: model.ModelFacts) -> int:
    return -(-req.frames // facts.frame_chunk)


def evaluate(
    req: Request, facts: model.ModelFacts, layout: Layout, fwd: model.ForwardFacts, ds: dict
) -> dict:
    """Memory, FLOPs, traffic and time of one layout."""
    run = Run(req.world, req.nodes, compute_dtype(ds).itemsize, req.fp8, req.mfu)
    mem = memory.per_gpu(facts, ds, layout, fwd, run)
    host = mem.pop("host_offload") * req.gpus_per_node
    flops = cost.step_flops(fwd, facts, layout.checkpointing)
    comm = cost.comm_bytes(facts, fwd, layout, run)
    time = cost.step_time(flops, comm, facts, ds, run)
    return {
        "sp": layout.sp,
        "checkpointing": layout.checkpointing,
        "offload": any(offloads(ds)),
        "deepspeed": layout.deepspeed,
        "fits": mem["total"] <= FIT_FRACTION * req.gpu_memory_gib * memory.GIB,
        "per_gpu_gib": {k: v / memory.GIB for k, v in mem.items()},
        "host_offload_gib_per_node": host / memory.GIB,
        "step_tflop_per_gpu": {k: v / 1e12 for k, v in flops.items()},
        "communication_gib_per_gpu": {k: v / memory.GIB for k, v in comm.items()},
        "time_s": time,
        "samples_per_s": req.world // layout.sp * req.batch / time["step"],
        "overrides": overrides(req, layout),
    }


def forward_facts(req: Request, cfg: TrainConfig, facts: model.ModelFacts, sp: int, ds: dict, tracers: dict):
    """Activations and FLOPs of one rank (Wan traces memoised in ``tracers`` per dtype)."""
    dtype = compute_dtype(ds)
    if facts.family == "wan":
        tracer = tracers.setdefault(dtype, model.WanTracer(cfg, req.batch, dtype))
        return tracer.forward(facts, model.tokens_per_sample(facts.args, req.frames, req.size), sp)
    return model.dcaev_forward(cfg, req.batch, req.frames, req.size, sp, dtype)


def plan(req: Request) -> dict:
    """Every candidate layout evaluated; ``layouts`` = those that fit, best first; ``chosen`` = the best
    one, or the most memory-frugal candidate when none fits."""
    check(req)
    base = Layout(1, False, req.deepspeed[0])
    facts = model.model_facts(config(req, base))
    checkpointing = req.checkpointing if facts.layers else (False,)
    results, traces, tracers = [], {}, {}
    for sp in sp_degrees(req, facts):
        for path in req.deepspeed:
            for ckpt in checkpointing:
                layout = Layout(sp, ckpt, path)
                cfg = config(req, layout)
                ds = deepspeed_config(cfg)
                key = (sp, compute_dtype(ds))
                if key not in traces:
                    traces[key] = forward_facts(req, cfg, facts, sp, ds, tracers)
                results.append(evaluate(req, facts, layout, traces[key], ds))
    fitting = sorted(
        (r for r in results if r["fits"]), key=lambda r: (-r["samples_per_s"], r["per_gpu_gib"]["total"])
    )
    chosen = fitting[0] if fitting else min(results, key=lambda r: r["per_gpu_gib"]["total"])
    summary = {
        "preset": req.preset,
        "task": req.task,
        "gpus": req.world,
        "tokens_per_sample": _tokens(req, facts),
        "params": facts.params,
        "trainable_params": facts.trainable,
        "lora_params": facts.lora,
        "assumptions": {**dataclasses.asdict(cost.H100), "mfu": req.mfu, "fit_fraction": FIT_FRACTION},
    }
    return {**summary, **chosen, "layouts": fitting}


def _tokens(req: Request, facts: model.ModelFacts) -> int:
    if facts.family == "wan":
        return model.tokens_per_sample(facts.args, req.frames, req.size)
    return req.frames * req.size[0] * req.size[1]  # pixels x frames
