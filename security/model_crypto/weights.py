"""The model directory's rules: which weights file is served, with which key, checked how.

`open_weights` is what each worker calls: the checkpoint bytes in an `io.BytesIO` (decrypted
from `pytorch_model.pt.enc`, or read from `pytorch_model.pt`), checked against the pinned
SHA-256, for `m2fp.build.load_model(model_dir, weights=...)`. `check_weights` checks the same
things streaming, without keeping the plaintext: the gunicorn master's preflight. Both take the
key file, the key text and the pin as arguments (the service's `Settings`), never from the
environment.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from security.model_crypto.encryption import decrypt_with_header, verify_file
from security.model_crypto.exceptions import (
    ModelIntegrityError,
    ModelKeyError,
    ModelProtectionError,
)
from security.model_crypto.keys import KEY_ENV, KEY_FILE_ENV, DecryptionKey, key_id, resolve_key
from security.model_crypto.pinning import SHA256_ENV, check_pin, normalize_sha256, sha256_file

log = logging.getLogger(__name__)

WEIGHTS_FILE = "pytorch_model.pt"
ENCRYPTED_WEIGHTS_FILE = "pytorch_model.pt.enc"
CONFIG_FILE = "configuration.json"


def _model_directory(model_dir: str | Path) -> Path:
    directory = Path(model_dir)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise ModelProtectionError(f"model directory {directory} {what}")
    return directory


def _key_configured(key_file: str | Path | None, key_text: str | None) -> bool:
    return (key_file is not None and str(key_file) != "") or bool((key_text or "").strip())


def _select_weights(
    directory: Path, key_file: str | Path | None, key_text: str | None, pin: str | None
) -> tuple[Path, DecryptionKey | None]:
    """The weights file of `directory` and, for an encrypted one, its key: the rules that
    `open_weights` and `check_weights` share. `pytorch_model.pt.enc` wins and needs a key;
    otherwise `pytorch_model.pt`, refused while a key is configured (a swapped directory)."""
    encrypted, plain = directory / ENCRYPTED_WEIGHTS_FILE, directory / WEIGHTS_FILE
    if encrypted.is_file():
        if plain.exists():
            log.warning(
                "%s also holds the unencrypted %s; loading %s. Remove the plaintext copy.",
                directory,
                WEIGHTS_FILE,
                ENCRYPTED_WEIGHTS_FILE,
            )
        key = resolve_key(key_file, key_text)
        if key is None:
            raise ModelKeyError(
                f"{encrypted} is encrypted and no key is configured: set {KEY_FILE_ENV} to a key"
                f" file (chmod 600) or {KEY_ENV}"
            )
        if pin is None and isinstance(key, rsa.RSAPrivateKey):
            log.warning(
                "envelope-encrypted weights without a SHA-256 pin: anyone with the public key"
                " can make a file this key opens; set %s",
                SHA256_ENV,
            )
        return encrypted, key
    if not plain.is_file():
        raise ModelProtectionError(
            f"{directory} holds neither {ENCRYPTED_WEIGHTS_FILE} nor {WEIGHTS_FILE}"
        )
    if _key_configured(key_file, key_text):
        raise ModelIntegrityError(
            f"a weights key is configured but {directory} holds only the unencrypted"
            f" {WEIGHTS_FILE}: refusing it (a swapped model directory?). Encrypt it with"
            f" `python -m security.model_crypto encrypt {directory} --key-file KEY`, or unset"
            f" {KEY_FILE_ENV} and {KEY_ENV} to serve plaintext weights"
        )
    return plain, None


def open_weights(
    model_dir: str | Path,
    *,
    key_file: str | Path | None = None,
    key_text: str | None = None,
    expected_sha256: str | None = None,
) -> io.BytesIO:
    """The checkpoint of `model_dir` in memory, for `load_model(model_dir, weights=...)`.

    `pytorch_model.pt.enc` is decrypted with the key of `key_file`, else with the key written
    in `key_text` (`M2FP_WEIGHTS_KEY`: hex, base64 or PEM); otherwise `pytorch_model.pt` is
    read. The SHA-256 of the plaintext must equal `expected_sha256` when given. When a key is
    configured, an unencrypted `pytorch_model.pt` alone is refused (a swapped directory). The
    plaintext never touches disk.

    Raises:
        ModelIntegrityError: modified file, wrong key, pin mismatch, plaintext where encrypted
            weights are required.
        ModelKeyError: no key for an encrypted file, or an unusable key (file permissions...).
        ModelProtectionError: no such directory, neither weights file exists or it cannot be
            read; malformed pin.
    """
    pin = normalize_sha256(expected_sha256)
    path, key = _select_weights(_model_directory(model_dir), key_file, key_text, pin)
    if key is not None:
        bio, header = decrypt_with_header(path, key, expected_sha256=pin)
        log.info(
            "decrypted %s in memory: %d bytes, key id %s, sha256 %s%s",
            path,
            header.plaintext_length,
            key_id(key),
            header.sha256,
            " (pinned)" * bool(pin),
        )
        return bio
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelProtectionError(f"cannot read {path}: {exc.strerror or exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    check_pin(actual, pin, path)
    log.info("read %s: %d bytes, sha256 %s%s", path, len(data), actual, " (pinned)" * bool(pin))
    return io.BytesIO(data)  # shares `data`'s buffer: one copy


@dataclass(frozen=True)
class WeightsCheck:
    """What `check_weights` verified: the file, its plaintext size and SHA-256, whether that
    hash was pinned, and the id of the key that opened it (None: plaintext weights)."""

    path: Path
    size: int
    sha256: str
    pinned: bool
    key_id: str | None

    @property
    def encrypted(self) -> bool:
        return self.key_id is not None


def _read_configuration(directory: Path) -> None:
    config = directory / CONFIG_FILE
    try:
        parsed = json.loads(config.read_bytes())
    except FileNotFoundError:
        raise ModelProtectionError(f"{directory} has no {CONFIG_FILE}") from None
    except OSError as exc:
        raise ModelProtectionError(f"cannot read {config}: {exc.strerror or exc}") from None
    except ValueError:  # JSON or UTF-8
        parsed = None
    if not isinstance(parsed, dict):
        raise ModelProtectionError(f"{config} is not a JSON object")


def check_weights(
    model_dir: str | Path,
    *,
    key_file: str | Path | None = None,
    key_text: str | None = None,
    expected_sha256: str | None = None,
) -> WeightsCheck:
    """Check everything `open_weights` would, streaming, without keeping the plaintext: a
    preflight for a process that must not load the model itself (the gunicorn master).

    The directory must exist and hold `configuration.json` (a JSON object) and a weights file
    chosen, with its key, by the rules of `open_weights`; an encrypted file is authenticated
    chunk by chunk and to its end, a plaintext one hashed; the SHA-256 must equal
    `expected_sha256` when given. Memory stays near one chunk (1 MiB by default).

    Raises:
        The errors of `open_weights`, and ModelProtectionError for a missing or malformed
        `configuration.json`.
    """
    pin = normalize_sha256(expected_sha256)
    directory = _model_directory(model_dir)
    _read_configuration(directory)
    path, key = _select_weights(directory, key_file, key_text, pin)
    if key is not None:
        header = verify_file(path, key, expected_sha256=pin)
        return WeightsCheck(path, header.plaintext_length, header.sha256, bool(pin), key_id(key))
    size = 0

    def count(n: int) -> None:
        nonlocal size
        size += n

    try:
        actual = sha256_file(path, progress=count)
    except OSError as exc:
        raise ModelProtectionError(f"cannot read {path}: {exc.strerror or exc}") from None
    check_pin(actual, pin, path)
    return WeightsCheck(path, size, actual, bool(pin), None)


__all__ = [
    "CONFIG_FILE",
    "ENCRYPTED_WEIGHTS_FILE",
    "WEIGHTS_FILE",
    "WeightsCheck",
    "check_weights",
    "open_weights",
]
