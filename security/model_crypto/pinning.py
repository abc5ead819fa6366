"""SHA-256 pinning: the hash of the plaintext weights, and the check against the pin."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from security.model_crypto.exceptions import ModelIntegrityError, ModelProtectionError

# The variable that sets the pin: named in messages, read by `settings.Settings`.
SHA256_ENV = "M2FP_WEIGHTS_SHA256"

# Receives byte counts as a file is read, for progress bars.
Progress = Callable[[int], None]

_IO_BLOCK = 1 << 20


def normalize_sha256(value: str | None) -> str | None:
    """A pin as 64 lower-case hex digits (None/empty: no pin).

    Raises:
        ModelProtectionError: not 64 hexadecimal digits.
    """
    if value is None or not value.strip():
        return None
    digest = value.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ModelProtectionError(f"a SHA-256 pin ({SHA256_ENV}) is 64 hexadecimal digits")
    return digest


def check_pin(actual: str, expected: str | None, path: Path | str) -> None:
    """Raise ModelIntegrityError naming both hashes when `expected` is set and differs."""
    expected = normalize_sha256(expected)
    if expected is not None and actual != expected:
        raise ModelIntegrityError(
            f"{path}: SHA-256 mismatch: expected {expected} ({SHA256_ENV}), actual {actual};"
            " refusing weights that are not the pinned checkpoint"
        )


def sha256_file(path: str | Path, *, progress: Progress | None = None) -> str:
    """The SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(_IO_BLOCK):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


__all__ = ["SHA256_ENV", "Progress", "check_pin", "normalize_sha256", "sha256_file"]
