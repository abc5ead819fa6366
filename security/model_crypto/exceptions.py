"""The three failures of model protection, from the most general to the most specific."""

from __future__ import annotations


class ModelProtectionError(Exception):
    """The weights cannot be loaded safely: missing files, bad arguments, unwritable output."""


class ModelIntegrityError(ModelProtectionError):
    """The weights are not the ones expected: a modified or truncated encrypted file, the wrong
    key, a SHA-256 pin mismatch, or plaintext weights where encrypted ones are required."""


class ModelKeyError(ModelProtectionError):
    """No usable key: missing, unreadable, malformed, or a key file others can read. Messages
    name the file or variable, never the key material."""


__all__ = ["ModelIntegrityError", "ModelKeyError", "ModelProtectionError"]
