"""megavg: Megatron-style distributed training of DC-VideoGen.

``megavg.Pipeline`` (:class:`megavg.infer.runner.Pipeline`) is imported on first use, so ``import megavg``
loads nothing heavy (no torch)."""

__version__ = "0.1.0"
__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str):
    if name == "Pipeline":
        from megavg.infer.runner import Pipeline

        return Pipeline
    raise AttributeError(f"module 'megavg' has no attribute {name!r}")
