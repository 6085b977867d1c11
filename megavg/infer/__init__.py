"""Single-GPU inference: the standalone runner that uses exported megavg model folders."""
