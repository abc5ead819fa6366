"""Keys: 256-bit secret keys and RSA key pairs; parsing, key files and their permission check,
key ids, generation.

A secret key is written as 64 hexadecimal digits or as the base64 of its 32 bytes; a key file
may instead hold an unencrypted PEM RSA private key (envelope mode). Nothing here reads the
environment: the service passes `Settings.weights_key_file` and `Settings.weights_key`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from security.model_crypto.exceptions import ModelKeyError, ModelProtectionError

# The variables that configure the key: named in messages, read by `settings.Settings`.
KEY_ENV = "M2FP_WEIGHTS_KEY"
KEY_FILE_ENV = "M2FP_WEIGHTS_KEY_FILE"

KEY_BYTES = 32
KEY_ID_BYTES = 8
MIN_RSA_BITS = 2048
MAX_RSA_BYTES = 1024  # 8192-bit moduli
MAX_KEY_FILE_BYTES = 64 * 1024

_KEY_ID_CONTEXT = b"m2fp weights key id v1\x00"


@dataclass(frozen=True, eq=False, repr=False)
class SecretKey:
    """A 256-bit symmetric key; `repr` and `str` show only its key id."""

    material: bytes

    def __post_init__(self) -> None:
        if len(self.material) != KEY_BYTES:
            raise ModelKeyError(f"a weights key has {KEY_BYTES} bytes")

    @property
    def key_id(self) -> str:
        return key_id(self)

    def __repr__(self) -> str:
        return f"SecretKey(key_id={self.key_id})"

    __str__ = __repr__


DecryptionKey = SecretKey | rsa.RSAPrivateKey
Recipient = SecretKey | rsa.RSAPublicKey


def key_id(key: SecretKey | rsa.RSAPublicKey | rsa.RSAPrivateKey) -> str:
    """The 16-hex-digit id of a key: a truncated SHA-256 of the secret key (with a context
    prefix) or of the DER public key. Safe to print and log; it reveals nothing of the key."""
    return key_id_bytes(key).hex()


def key_id_bytes(key: SecretKey | rsa.RSAPublicKey | rsa.RSAPrivateKey) -> bytes:
    """The key id as the 8 bytes stored in a key slot."""
    if isinstance(key, SecretKey):
        return hashlib.sha256(_KEY_ID_CONTEXT + key.material).digest()[:KEY_ID_BYTES]
    if isinstance(key, rsa.RSAPrivateKey):
        key = key.public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()[:KEY_ID_BYTES]


def generate_secret_key() -> SecretKey:
    return SecretKey(secrets.token_bytes(KEY_BYTES))


def generate_rsa_key(bits: int = 3072) -> rsa.RSAPrivateKey:
    if bits < MIN_RSA_BITS or bits > MAX_RSA_BYTES * 8:
        raise ModelProtectionError(f"RSA keys must have {MIN_RSA_BITS}..{MAX_RSA_BYTES * 8} bits")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The PEM (PKCS#8, no passphrase: the service starts unattended) of a key file."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of a recipient's public key."""
    if isinstance(key, rsa.RSAPrivateKey):
        key = key.public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def format_secret_key(key: SecretKey) -> str:
    """The text of a key file: a comment line with the key id, then the key in base64."""
    return (
        f"# M2FP weights key (AES-256), key id {key.key_id}. Keep it secret: chmod 600.\n"
        + base64.b64encode(key.material).decode("ascii")
        + "\n"
    )


def parse_secret_key(text: str | bytes, *, source: str) -> SecretKey:
    """Read a 256-bit key written as 64 hexadecimal digits or as base64 (standard or URL-safe
    alphabet) of 32 bytes; blank lines and lines starting with `#` are ignored.

    Raises:
        ModelKeyError: naming `source`, never echoing the value.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            text = ""
    lines = [ln.strip() for ln in text.splitlines()]
    value = "".join(ln for ln in lines if ln and not ln.startswith("#"))
    material = b""
    with contextlib.suppress(ValueError, binascii.Error):
        if len(value) == 2 * KEY_BYTES and all(c in "0123456789abcdefABCDEF" for c in value):
            material = bytes.fromhex(value)
        else:
            alphabet = value.replace("-", "+").replace("_", "/")
            material = base64.b64decode(alphabet + "=" * (-len(alphabet) % 4), validate=True)
    if len(material) != KEY_BYTES:
        raise ModelKeyError(
            f"{source} does not hold a valid weights key: expected {2 * KEY_BYTES} hexadecimal"
            f" digits or the base64 of {KEY_BYTES} bytes (make one with"
            " `python -m security.model_crypto keygen`)"
        )
    return SecretKey(material)


def parse_decryption_key(data: bytes, *, source: str) -> DecryptionKey:
    """A secret key (hex/base64) or an unencrypted PEM RSA private key (envelope mode)."""
    if b"-----BEGIN" not in data:
        return parse_secret_key(data, source=source)
    if b"PUBLIC KEY-----" in data:
        raise ModelKeyError(f"{source} holds a public key; decrypting needs the private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ModelKeyError(
            f"{source} is a passphrase-protected private key; the service starts unattended,"
            " so store the key without a passphrase and protect the file (chmod 600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ModelKeyError(f"{source} is not a readable PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ModelKeyError(f"{source} is not an RSA private key")
    _check_rsa_size(key.key_size, source)
    return key


def read_key_file(path: str | Path) -> DecryptionKey:
    """Read a key file, refusing one that group or others may access.

    Raises:
        ModelKeyError: missing/unreadable file, loose permissions, or malformed content.
    """
    path = Path(path)
    try:
        # O_NONBLOCK: a FIFO or device in place of the key must not hang the start.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ModelKeyError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)  # of the file opened, not of a path that could change meanwhile
        if not stat.S_ISREG(st.st_mode):
            raise ModelKeyError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ModelKeyError(
                f"key file {path} is accessible by group or others (mode {mode:04o});"
                f" restrict it with: chmod 600 {path}"
            )
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ModelKeyError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ModelKeyError(f"key file {path} is too large to be a key")
    return parse_decryption_key(data, source=f"key file {path}")


def key_from_text(text: str | None, *, source: str) -> DecryptionKey | None:
    """The key written in `text` (hex, base64 or PEM), None when `text` is unset or blank.
    `source` names where the text came from in messages (`environment variable NAME`)."""
    if text is None or not text.strip():
        return None
    return parse_decryption_key(text.encode("utf-8"), source=source)


def resolve_key(
    key_file: str | Path | None,
    key_text: str | None,
    *,
    source: str = f"environment variable {KEY_ENV}",
) -> DecryptionKey | None:
    """The key of `key_file` when one is given, else the key written in `key_text`, else None.
    The text is not even parsed when a key file is given."""
    if key_file is not None and str(key_file) != "":
        return read_key_file(key_file)
    return key_from_text(key_text, source=source)


def read_public_key(path: str | Path) -> rsa.RSAPublicKey:
    """Read a PEM RSA public key (an envelope-mode recipient)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelKeyError(f"cannot read public key {path}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY-----" in data:
        raise ModelKeyError(f"{path} is a private key; pass the recipient's public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ModelKeyError(f"{path} is not a readable PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ModelKeyError(f"{path} is not an RSA public key")
    _check_rsa_size(key.key_size, str(path))
    return key


def _check_rsa_size(bits: int, source: str) -> None:
    if not MIN_RSA_BITS <= bits <= MAX_RSA_BYTES * 8:
        limits = f"{MIN_RSA_BITS}..{MAX_RSA_BYTES * 8}"
        raise ModelKeyError(f"{source}: RSA keys must have {limits} bits, not {bits}")


__all__ = [
    "KEY_ENV",
    "KEY_FILE_ENV",
    "DecryptionKey",
    "Recipient",
    "SecretKey",
    "format_secret_key",
    "generate_rsa_key",
    "generate_secret_key",
    "key_from_text",
    "key_id",
    "key_id_bytes",
    "parse_decryption_key",
    "parse_secret_key",
    "private_key_pem",
    "public_key_pem",
    "read_key_file",
    "read_public_key",
    "resolve_key",
]
