"""megavg: Megatron-style distributed training of DC-VideoGen."""

__version__ = "0.1.0"
