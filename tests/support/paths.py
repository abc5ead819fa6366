"""Where the repository and the test fixtures lie, for every test module and helper."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The project's model facts (shared/m2fp), copied in so a clone anywhere runs the tests.
M2FP_FIXTURES = REPO / "tests" / "fixtures" / "m2fp"
TINY_REFERENCE = M2FP_FIXTURES / "tiny_reference"
