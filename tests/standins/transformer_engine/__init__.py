"""CPU stand-in for NVIDIA Transformer Engine (test-only; never installed, put on ``sys.path`` by tests).

It computes with torch on the CPU (standing for the CUDA device) and enforces the rules of the real
library that megavg's GPU path must respect; each rule cites the TE source it mirrors. Real TE's
package ``__init__`` imports its framework module, so ``transformer_engine.pytorch`` is an attribute
after ``import transformer_engine`` (peft's ``is_te_pytorch_available`` relies on it).
See docs/gpu.md for what is enforced and what is not emulated.
"""

from transformer_engine import common, pytorch  # noqa: F401

__version__ = "2.9.0+cpu.standin"
STANDIN = True
