"""security/model_crypto/atomic.py: an output file appears whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from security import model_crypto as mc
from tests.support import crypto_files as cf


def test_atomic_output_removes_the_temporary_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), mc.atomic_output(target) as out:
        out.write(b"partial")
        raise RuntimeError("boom")
    assert not target.exists() and cf.leftovers(tmp_path) == []
    with mc.atomic_output(target, mode=0o640) as out:
        out.write(b"done")
    assert target.read_bytes() == b"done" and oct(target.stat().st_mode & 0o777) == "0o640"
