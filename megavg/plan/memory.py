"""Per-GPU memory of a layout under DeepSpeed ZeRO-3, as megavg trains.

Model states are partitioned over all N = DP x SP ranks: every parameter keeps its compute-dtype copy
(c bytes: 2 with bf16, 4 with fp32; frozen ones too), trainable ones also a compute-dtype gradient, an fp32
master copy (4) and two fp32 Adam moments (8). With optimizer offload the gradients, master and moments
live in host memory; with parameter offload the parameter partitions too (``host_offload``: those bytes
per GPU, a lower bound of the host memory: DeepSpeed's CPU-Adam gradient copies and pinned buffers come
on top). Working memory: the gathered
parameters of the block in use and the prefetched next one, the DeepSpeed reduce (IPG) and prefetch
buckets, Ulysses all-to-all buffers, FP8 weight copies, and activations (:mod:`megavg.plan.model`).
"""

from __future__ import annotations

from megavg.plan.model import ForwardFacts, ModelFacts
from megavg.plan.spec import Layout, Run, offloads

GIB = 2**30
MASTER_AND_MOMENTS = 12  # fp32 master copy + Adam exp_avg + exp_avg_sq, bytes per trainable parameter
DEEPSPEED_DEFAULTS = {"reduce_bucket_size": 5e8, "stage3_prefetch_bucket_size": 5e7}  # DeepSpeed 0.19
WORKING = ("zero3_gathered", "deepspeed_buckets", "sp_buffers", "fp8_copies", "activations")


def model_states(facts: ModelFacts, ds: dict, run: Run) -> dict[str, float]:
    """Partitioned parameters / gradients / optimizer states (LoRA's share of all three separately) on
    the GPU, and ``host_offload``: what offloading moved to host memory, per GPU."""
    offload_optimizer, offload_params = offloads(ds)

    def states(params: int, trainable: int, off_optimizer: bool, off_params: bool) -> tuple[float, ...]:
        kept = 0.0 if off_optimizer else 1.0
        param = 0.0 if off_params else run.c * params / run.world
        return param, kept * run.c * trainable / run.world, kept * MASTER_AND_MOMENTS * trainable / run.world

    base, lora = (facts.params - facts.lora, facts.trainable - facts.lora), (facts.lora, facts.lora)
    p, g, o = states(*base, offload_optimizer, offload_params)
    lora_gpu = sum(states(*lora, offload_optimizer, offload_params))
    on_gpu = p + g + o + lora_gpu
    everything = sum(states(*base, False, False)) + sum(states(*lora, False, False))
    return {
        "parameters": p,
        "gradients": g,
        "optimizer_states": o,
        "lora": lora_gpu,
        "model_states": on_gpu,
        "host_offload": everything - on_gpu,
    }


def working_memory(facts: ModelFacts, ds: dict, layout: Layout, fwd: ForwardFacts, run: Run) -> dict:
    """Gathered blocks, DeepSpeed buckets, SP buffers and FP8 copies (bytes)."""
    zero = {**DEEPSPEED_DEFAULTS, **ds.get("zero_optimization", {})}
    reduce = zero["reduce_bucket_size"] if facts.trainable else 0
    sp_buffers = 0.0
    if layout.sp > 1:  # q/k/v ([B, S/P, 3 dim]) and the attention output, each sent and received
        sp_buffers = 2 * 4 * fwd.block_input
    return {
        "zero3_gathered": 2.0 * run.c * facts.block_params,  # the block computing + the prefetched one
        "deepspeed_buckets": run.c * (zero["stage3_prefetch_bucket_size"] + reduce),
        "sp_buffers": sp_buffers,
        "fp8_copies": 2.0 * facts.block_params if run.fp8 else 0.0,  # FP8 weight + transpose, gathered block
    }


def per_gpu(facts: ModelFacts, ds: dict, layout: Layout, fwd: ForwardFacts, run: Run) -> dict[str, float]:
    """The breakdown (bytes): model states, working memory, activations (both ways), ``total``."""
    out = model_states(facts, ds, run) | working_memory(facts, ds, layout, fwd, run)
    out["activations_no_checkpointing"] = float(fwd.peak(False))
    out["activations_checkpointing"] = float(fwd.peak(True)) if facts.layers else float(fwd.peak(False))
    key = "activations_checkpointing" if layout.checkpointing else "activations_no_checkpointing"
    out["activations"] = out[key]
    out["total"] = out["model_states"] + sum(out[k] for k in WORKING)  # host_offload is not on the GPU
    return out
