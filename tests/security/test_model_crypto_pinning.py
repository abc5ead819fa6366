"""security/model_crypto/pinning.py: the SHA-256 of a file and the pin check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from security import model_crypto as mc
from tests.support import crypto_files as cf


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3 * 1024 * 1024 + 5)
    seen = []
    path = cf.write(tmp_path / "f", data)
    assert mc.sha256_file(path, progress=seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)


def test_pins_are_normalized_and_checked(tmp_path: Path) -> None:
    digest = "ab" * 32
    assert mc.normalize_sha256(f"  {digest.upper()}\n") == digest
    assert mc.normalize_sha256(None) is None and mc.normalize_sha256(" ") is None
    with pytest.raises(mc.ModelProtectionError, match="64 hexadecimal digits"):
        mc.normalize_sha256("1234")
    mc.check_pin(digest, digest.upper(), tmp_path)
    mc.check_pin(digest, None, tmp_path)
    with pytest.raises(mc.ModelIntegrityError, match=f"expected {'00' * 32}.*actual {digest}"):
        mc.check_pin(digest, "00" * 32, tmp_path)
