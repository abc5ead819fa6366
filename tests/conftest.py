"""Fixtures shared by every test module: paths, tiny model directories made by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores on CI: keep torch from oversubscribing them when tests run servers beside it.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
# The project's model facts (shared/m2fp), copied in so a clone anywhere runs the tests.
M2FP_FIXTURES = REPO / "tests" / "fixtures" / "m2fp"
TINY_REFERENCE = M2FP_FIXTURES / "tiny_reference"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ModelScope-style model directory (configuration.json + pytorch_model.pt) holding a
    tiny M2FP with seeded random weights, confident enough to find parts and persons."""
    from tests.model_factory import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"), seed=0)
