"""Run planner: per-GPU memory, FLOPs, communication and step time of a training layout, before launch.

    python -m megavg.plan --preset dc-videogen-wan2.1-t2v-14b --nodes 1 --gpus-per-node 8 \\
        --gpu-memory-gib 80 --size 704 1280 --frames 80 --task adapt_lora

The model is built on the meta device by the task itself (so parameter counts, frozen parameters and LoRA
are exactly what training gets) and its forward is traced on meta to count the bytes autograd saves for
backward. Memory follows ZeRO-3 (:mod:`megavg.plan.memory`), FLOPs and traffic :mod:`megavg.plan.cost`,
candidate layouts :mod:`megavg.plan.layouts`.
"""

from megavg.plan.layouts import Request, plan

__all__ = ["Request", "plan"]
