"""Step FLOPs, communication volume and time estimates from stated H100 numbers.

Compute time = executed FLOPs per GPU / (peak x utilisation); the utilisation (``mfu``) is an assumption
the output names (default 0.35: Wan-2.1-14B on the Megatron path reaches ~33% of H100 bf16 peak,
DESIGN.md section 9). Communication is counted in bytes each GPU receives and turned into time with the
link bandwidths below; step time = max(compute, communication) (overlapped) + offload transfers.
"""

from __future__ import annotations

from dataclasses import dataclass

from megavg.plan.model import ForwardFacts, ModelFacts
from megavg.plan.spec import Layout, Run, offloads


@dataclass(frozen=True)
class Hardware:
    name: str = "H100 SXM"
    bf16_tflops: float = 989.0  # dense bf16 peak, TFLOP/s
    fp8_tflops: float = 1979.0  # dense FP8 peak
    nvlink_gb_s: float = 450.0  # per GPU, one direction (NVLink 4: 900 GB/s bidirectional)
    network_gb_s: float = 50.0  # per GPU across nodes (one 400 Gb/s InfiniBand NIC per GPU)
    pcie_gb_s: float = 25.0  # host <-> GPU, effective (PCIe 5 x16, pinned)


H100 = Hardware()


def step_flops(fwd: ForwardFacts, facts: ModelFacts, checkpointing: bool) -> dict[str, float]:
    """Per GPU and step: ``model`` = forward + backward; ``executed`` adds the checkpointing recompute.

    Backward = one forward's FLOPs for the input gradients plus, for the weight gradients, a forward's
    FLOPs times the trainable fraction of the parameters (2x forward when everything trains; ~1x for
    LoRA on a frozen backbone)."""
    forward = float(fwd.flops)
    backward = forward * (1 + facts.trainable / facts.params)
    model = forward + backward
    return {"forward": forward, "model": model, "executed": model + (forward if checkpointing else 0.0)}


def comm_bytes(facts: ModelFacts, fwd: ForwardFacts, layout: Layout, run: Run) -> dict[str, float]:
    """Bytes each GPU receives per step: ZeRO-3 parameter all-gathers (forward and backward), gradient
    reduce-scatter, Ulysses all-to-alls (q/k/v + output, forward, backward and any recompute)."""
    share = (run.world - 1) / run.world
    gathers = 2 * run.c * facts.params * share
    reduce_scatter = run.c * facts.trainable * share
    a2a = 0.0
    if layout.sp > 1:
        passes = 3 if layout.checkpointing else 2
        a2a = passes * facts.layers * 4 * fwd.block_input * (layout.sp - 1) / layout.sp
    return {"zero3_allgather": gathers, "zero3_reduce_scatter": reduce_scatter, "ulysses_all_to_all": a2a}


def step_time(flops: dict, comm: dict, facts: ModelFacts, ds: dict, run: Run, hw: Hardware = H100) -> dict:
    """Seconds per step: compute at ``mfu`` of peak, communication over NVLink (one node) or the network,
    host transfers for offload (not overlapped)."""
    peak = (hw.fp8_tflops if run.fp8 else hw.bf16_tflops) * 1e12
    compute = flops["executed"] / (peak * run.mfu)
    zero_bw = (hw.nvlink_gb_s if run.nodes == 1 else hw.network_gb_s) * 1e9
    network = (comm["zero3_allgather"] + comm["zero3_reduce_scatter"]) / zero_bw
    network += comm["ulysses_all_to_all"] / (hw.nvlink_gb_s * 1e9)  # SP groups stay inside a node
    offload_optimizer, offload_params = offloads(ds)
    host = 0.0
    if offload_optimizer:  # gradients down, updated parameters up
        host += 2 * run.c * facts.trainable / run.world
    if offload_params:  # parameter partitions up for the forward and the backward gathers
        host += 2 * run.c * facts.params / run.world
    offload = host / (hw.pcie_gb_s * 1e9)
    return {
        "compute": compute,
        "communication": network,
        "offload": offload,
        "step": max(compute, network) + offload,
    }
