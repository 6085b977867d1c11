"""Training: config tree, DeepSpeed engine, checkpoints, signals, metrics, loop.

Entry point: ``python -m megavg.train --config FILE [section.key=value ...]`` (also under
``deepspeed --module megavg.train`` and ``torchrun -m megavg.train``).
"""
