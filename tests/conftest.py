"""Shared test set-up: offline, deterministic, CPU by default; ``gpu`` tests skip without CUDA."""

import logging
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


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
