"""Shared test set-up: offline, deterministic, CPU by default; ``gpu`` tests skip without CUDA.

One intra-op thread everywhere, whatever the shell exported: OpenMP (torch), MKL and OpenBLAS (numpy) read
their thread counts when first imported, so the variables are set before anything below imports torch or
numpy, and every process a test starts inherits them (the torchrun launcher sets 1 too). The in-process
side of a cross-process comparison then runs the ranks' arithmetic; tests that compare across thread
counts set them themselves (tests/eval/test_eval_distributed.py).
"""

import os

THREADS = "1"
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = THREADS
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import logging  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(THREADS))  # in case a plugin imported torch before this file ran


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (GPU path); this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def standins():
    """Transformer Engine / flash-attn CPU stand-ins (tests/standins) importable and enabled in this test."""
    from tests.gpu_standins import use_standins

    with use_standins():
        yield


class Catcher(logging.Handler):
    """Collects the messages of the records it handles (``level`` and above)."""

    def __init__(self, level: int = logging.WARNING):
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_log():
    """Collect WARNING messages of the ``megavg`` logger (which does not propagate to the root)."""
    catcher = Catcher()
    logger = logging.getLogger("megavg")
    logger.addHandler(catcher)
    yield catcher.messages
    logger.removeHandler(catcher)
