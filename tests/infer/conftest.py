"""Shared fixture: the tiny generation components (built once per session, read-only for tests)."""

import pytest

from tests.infer.tiny_pipeline import build_components


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory):
    """Paths of the tiny T2V/I2V DiTs, DC-AE-V, umT5 + tokenizer and CLIP folders."""
    return build_components(tmp_path_factory.mktemp("tiny_parts"))
