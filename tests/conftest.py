"""Shared test set-up: offline, deterministic, CPU by default; ``gpu`` tests skip without CUDA."""

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
