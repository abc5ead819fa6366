"""Model file protection: SHA-256 pinning and encryption at rest, decrypted only in memory.

`open_weights(model_dir, ...)` is what the service calls: it returns the checkpoint bytes in an
`io.BytesIO` (decrypted from `pytorch_model.pt.enc`, or read from `pytorch_model.pt`), checked
against the pinned SHA-256, for `m2fp.build.load_model(model_dir, weights=...)`.
`check_weights(model_dir, ...)` checks the same things streaming, without keeping the
plaintext: the gunicorn master's preflight. Nothing here imports torch or Flask, and no
plaintext is ever written to disk.

File format, version 1 (integers big-endian):

    file header, 64 bytes: the associated data of every chunk, key slot and the header tag
      0  magic b"\\x89M2FPENC"        24  SHA-256 of the plaintext [32]
      8  version u8 = 1              56  nonce prefix [7], random per file
      9  algorithm u8 = 1            63  reserved u8 = 0
     10  reserved u16 = 0
     12  chunk size u32 (bytes of plaintext per chunk)
     16  plaintext length u64
    key slots: count u8 (1..16), then per slot: kind u8, key id [8], length u16, wrapped key
      kind 1: the data key under a 256-bit key, AES-256-GCM: nonce [12] + ciphertext + tag
      kind 2: the data key under an RSA public key, RSA-OAEP (MGF1 and hash SHA-256)
      each with associated data (GCM) or label (OAEP) = file header + kind + key id
    header tag [16]: AES-256-GCM under the data key of an empty message, nonce
      prefix + ffffffff + 02, associated data = every header byte before the tag
    body: chunk i (0-based) = AES-256-GCM under the data key, nonce prefix + u32 i + u8 last
      (1 on the final chunk, else 0), associated data = file header; ciphertext + tag [16].
      Every chunk but the last holds exactly `chunk size` plaintext bytes; an empty plaintext
      is one empty final chunk.

Each file has its own random 256-bit data key, so nonces never repeat under a key. The index and
final flag in each nonce detect reordered, dropped, duplicated or appended chunks and truncation;
the header tag covers the key slots, so any changed byte anywhere is refused with
`ModelIntegrityError` before anything is returned. Key slots can be replaced without touching
the body (`rewrap_file(..., reencrypt=False)`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import stat
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

WEIGHTS_FILE = "pytorch_model.pt"
ENCRYPTED_WEIGHTS_FILE = "pytorch_model.pt.enc"
CONFIG_FILE = "configuration.json"
KEY_ENV = "M2FP_WEIGHTS_KEY"
KEY_FILE_ENV = "M2FP_WEIGHTS_KEY_FILE"
SHA256_ENV = "M2FP_WEIGHTS_SHA256"

MAGIC = b"\x89M2FPENC"
FORMAT_VERSION = 1
ALGORITHM_AES256GCM_CHUNKED = 1
SLOT_SECRET_KEY = 1
SLOT_RSA_OAEP_SHA256 = 2
KEY_BYTES = 32
KEY_ID_BYTES = 8
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 7
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 10
MAX_CHUNK_SIZE = 1 << 26
MAX_SLOTS = 16
MIN_RSA_BITS = 2048
MAX_RSA_BYTES = 1024  # 8192-bit moduli
MAX_KEY_FILE_BYTES = 64 * 1024
INTEGRITY_MESSAGE = "the encrypted model file has been modified or the key is wrong"

_FILE_HEADER = struct.Struct(">8sBBHIQ32s7sB")  # 64 bytes
_SLOT_HEAD = struct.Struct(">B8sH")
_GCM_NONCE_BYTES = 12
_SECRET_WRAP_BYTES = _GCM_NONCE_BYTES + KEY_BYTES + TAG_BYTES
_HEADER_TAG_NONCE_SUFFIX = b"\xff\xff\xff\xff\x02"
_KEY_ID_CONTEXT = b"m2fp weights key id v1\x00"
_IO_BLOCK = 1 << 20

Progress = Callable[[int], None]


class ModelProtectionError(Exception):
    """The weights cannot be loaded safely: missing files, bad arguments, unwritable output."""


class ModelIntegrityError(ModelProtectionError):
    """The weights are not the ones expected: a modified or truncated encrypted file, the wrong
    key, a SHA-256 pin mismatch, or plaintext weights where encrypted ones are required."""


class ModelKeyError(ModelProtectionError):
    """No usable key: missing, unreadable, malformed, or a key file others can read. Messages
    name the file or variable, never the key material."""


# --------------------------------------------------------------------------------------- keys


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
    return _key_id_bytes(key).hex()


def _key_id_bytes(key: SecretKey | rsa.RSAPublicKey | rsa.RSAPrivateKey) -> bytes:
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


def key_from_env(name: str = KEY_ENV) -> DecryptionKey | None:
    """The key held by environment variable `name` (hex, base64 or PEM), None when unset."""
    value = os.environ.get(name, "") if name else ""
    if not value.strip():
        return None
    return parse_decryption_key(value.encode("utf-8"), source=f"environment variable {name}")


def resolve_key(key_file: str | Path | None, key_env: str | None = KEY_ENV) -> DecryptionKey | None:
    """The key file when given, else the environment variable, else None."""
    if key_file is not None and str(key_file) != "":
        return read_key_file(key_file)
    return key_from_env(key_env or "")


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


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


# ------------------------------------------------------------------------------------- format


@dataclass(frozen=True)
class KeySlot:
    kind: int
    key_id: bytes
    wrapped: bytes

    def to_bytes(self) -> bytes:
        return _SLOT_HEAD.pack(self.kind, self.key_id, len(self.wrapped)) + self.wrapped


@dataclass(frozen=True)
class EncryptedHeader:
    """A parsed header. Unauthenticated until a key opened it (`decrypt_*`, `verify_file`)."""

    chunk_size: int
    plaintext_length: int
    plaintext_sha256: bytes
    nonce_prefix: bytes
    slots: tuple[KeySlot, ...]
    file_header: bytes  # the 64 fixed bytes: associated data of every chunk
    raw: bytes  # every header byte, header tag included

    @property
    def sha256(self) -> str:
        return self.plaintext_sha256.hex()

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(s.key_id.hex() for s in self.slots)

    @property
    def chunks(self) -> int:
        return _chunk_count(self.plaintext_length, self.chunk_size)

    @property
    def file_length(self) -> int:
        return len(self.raw) + self.plaintext_length + TAG_BYTES * self.chunks


def _chunk_count(length: int, chunk_size: int) -> int:
    return max(1, -(-length // chunk_size))


def _chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def _integrity_error(path: Path | str, detail: str) -> ModelIntegrityError:
    return ModelIntegrityError(f"{path}: {INTEGRITY_MESSAGE} ({detail})")


def _pack_file_header(chunk_size: int, length: int, sha: bytes, prefix: bytes) -> bytes:
    return _FILE_HEADER.pack(
        MAGIC, FORMAT_VERSION, ALGORITHM_AES256GCM_CHUNKED, 0, chunk_size, length, sha, prefix, 0
    )


def _wrap(recipient: Recipient, data_key: bytes, file_header: bytes) -> KeySlot:
    kid = _key_id_bytes(recipient)
    if isinstance(recipient, SecretKey):
        aad = file_header + bytes([SLOT_SECRET_KEY]) + kid
        nonce = secrets.token_bytes(_GCM_NONCE_BYTES)
        wrapped = nonce + AESGCM(recipient.material).encrypt(nonce, data_key, aad)
        return KeySlot(SLOT_SECRET_KEY, kid, wrapped)
    if isinstance(recipient, rsa.RSAPublicKey):
        label = file_header + bytes([SLOT_RSA_OAEP_SHA256]) + kid
        return KeySlot(SLOT_RSA_OAEP_SHA256, kid, recipient.encrypt(data_key, _oaep(label)))
    raise TypeError(f"not a recipient key: {type(recipient).__name__}")


def _unwrap(slot: KeySlot, key: DecryptionKey, file_header: bytes) -> bytes | None:
    aad = file_header + bytes([slot.kind]) + slot.key_id
    try:
        if slot.kind == SLOT_SECRET_KEY and isinstance(key, SecretKey):
            nonce, sealed = slot.wrapped[:_GCM_NONCE_BYTES], slot.wrapped[_GCM_NONCE_BYTES:]
            data_key = AESGCM(key.material).decrypt(nonce, sealed, aad)
        elif slot.kind == SLOT_RSA_OAEP_SHA256 and isinstance(key, rsa.RSAPrivateKey):
            data_key = key.decrypt(slot.wrapped, _oaep(aad))
        else:
            return None
    except (InvalidTag, ValueError):
        return None
    return data_key if len(data_key) == KEY_BYTES else None


def _assemble_header(file_header: bytes, slots: Sequence[KeySlot], data_key: bytes) -> bytes:
    if not 1 <= len(slots) <= MAX_SLOTS:
        raise ModelProtectionError(f"an encrypted file has 1..{MAX_SLOTS} keys or recipients")
    body = file_header + bytes([len(slots)]) + b"".join(s.to_bytes() for s in slots)
    prefix = file_header[56:63]
    tag = AESGCM(data_key).encrypt(prefix + _HEADER_TAG_NONCE_SUFFIX, b"", body)
    return body + tag


def _read_exact(fh: BinaryIO, n: int, path: Path | str, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise _integrity_error(path, f"file ends inside the {what}")
    return data


def read_header(fh: BinaryIO, path: Path | str = "<file>") -> EncryptedHeader:
    """Parse the header at the start of `fh` (left positioned at the first chunk).

    Raises:
        ModelIntegrityError: anything malformed (the standard modified-or-wrong-key message).
    """
    file_header = _read_exact(fh, _FILE_HEADER.size, path, "header")
    magic, version, algorithm, reserved, chunk_size, length, sha, prefix, reserved2 = (
        _FILE_HEADER.unpack(file_header)
    )
    if magic != MAGIC:
        raise _integrity_error(path, "no M2FP encryption header: is this an encrypted model?")
    if version != FORMAT_VERSION:
        raise _integrity_error(path, f"unknown format version {version}")
    if algorithm != ALGORITHM_AES256GCM_CHUNKED or reserved or reserved2:
        raise _integrity_error(path, "unknown algorithm or flags in the header")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise _integrity_error(path, "chunk size out of range in the header")
    if _chunk_count(length, chunk_size) > 0xFFFFFFFF:
        raise _integrity_error(path, "plaintext length out of range in the header")
    count = _read_exact(fh, 1, path, "header")[0]
    if not 1 <= count <= MAX_SLOTS:
        raise _integrity_error(path, "bad key slot count in the header")
    parts, slots = [file_header, bytes([count])], []
    for _ in range(count):
        head = _read_exact(fh, _SLOT_HEAD.size, path, "key slots")
        kind, kid, size = _SLOT_HEAD.unpack(head)
        valid = (kind == SLOT_SECRET_KEY and size == _SECRET_WRAP_BYTES) or (
            kind == SLOT_RSA_OAEP_SHA256 and MIN_RSA_BITS // 8 <= size <= MAX_RSA_BYTES
        )
        if not valid:
            raise _integrity_error(path, "bad key slot in the header")
        wrapped = _read_exact(fh, size, path, "key slots")
        parts += [head, wrapped]
        slots.append(KeySlot(kind, kid, wrapped))
    parts.append(_read_exact(fh, TAG_BYTES, path, "header"))
    return EncryptedHeader(
        chunk_size=chunk_size,
        plaintext_length=length,
        plaintext_sha256=sha,
        nonce_prefix=prefix,
        slots=tuple(slots),
        file_header=file_header,
        raw=b"".join(parts),
    )


def _open_data_key(header: EncryptedHeader, key: DecryptionKey, path: Path | str) -> bytes:
    """Unwrap the data key with `key` and authenticate the whole header with it."""
    kid = _key_id_bytes(key)
    matching = [s for s in header.slots if s.key_id == kid]
    if not matching:
        ids = ("key ids " if len(header.slots) > 1 else "key id ") + ", ".join(header.key_ids)
        raise _integrity_error(
            path, f"the file is encrypted for {ids}; the key given has id {kid.hex()}"
        )
    for slot in matching:
        data_key = _unwrap(slot, key, header.file_header)
        if data_key is None:
            continue
        nonce = header.nonce_prefix + _HEADER_TAG_NONCE_SUFFIX
        try:
            AESGCM(data_key).decrypt(nonce, header.raw[-TAG_BYTES:], header.raw[:-TAG_BYTES])
        except InvalidTag:
            break
        return data_key
    raise _integrity_error(path, "header or key slot")


def _iter_chunks(
    fh: BinaryIO, header: EncryptedHeader, data_key: bytes, path: Path | str
) -> Iterator[tuple[bytes, bytes]]:
    """Yield (sealed chunk, plaintext) in order, each authenticated; after the last, check the
    end of the file and the plaintext hash. Raises ModelIntegrityError on any failure."""
    aead = AESGCM(data_key)
    n, remaining = header.chunks, header.plaintext_length
    digest = hashlib.sha256()
    for index in range(n):
        size = min(header.chunk_size, remaining)
        sealed = fh.read(size + TAG_BYTES)
        if len(sealed) != size + TAG_BYTES:
            raise _integrity_error(path, f"truncated in chunk {index + 1} of {n}")
        nonce = _chunk_nonce(header.nonce_prefix, index, index == n - 1)
        try:
            plain = aead.decrypt(nonce, sealed, header.file_header)
        except InvalidTag:
            raise _integrity_error(path, f"chunk {index + 1} of {n}") from None
        remaining -= size
        digest.update(plain)
        yield sealed, plain
    if fh.read(1):
        raise _integrity_error(path, "unexpected data after the last chunk")
    if digest.digest() != header.plaintext_sha256:
        raise _integrity_error(path, "the plaintext does not match the SHA-256 in the header")


def _check_length(header: EncryptedHeader, size: int, path: Path | str) -> None:
    expected = header.file_length
    if size < expected:
        raise _integrity_error(path, f"truncated: {expected - size} bytes missing")
    if size > expected:
        raise _integrity_error(path, f"{size - expected} unexpected bytes after the end")


# --------------------------------------------------------------------------------- pinning


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


# ------------------------------------------------------------------------------- decryption


def _decrypt(
    path: Path,
    key: DecryptionKey,
    *,
    expected_sha256: str | None,
    start: Callable[[EncryptedHeader], None] | None,
    sink: Callable[[bytes], object] | None,
    progress: Progress | None,
) -> EncryptedHeader:
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ModelProtectionError(f"cannot open {path}: {exc.strerror or exc}") from None
    with fh:
        header = read_header(fh, path)
        data_key = _open_data_key(header, key, path)
        _check_length(header, os.fstat(fh.fileno()).st_size, path)
        # The header is authentic now: refuse a wrong model before decrypting it.
        check_pin(header.sha256, expected_sha256, path)
        if start:
            start(header)
        for sealed, plain in _iter_chunks(fh, header, data_key, path):
            if sink:
                sink(plain)
            if progress:
                progress(len(sealed))
    return header


def decrypt_to_memory(
    path: str | Path,
    key: DecryptionKey,
    *,
    expected_sha256: str | None = None,
    progress: Progress | None = None,
) -> io.BytesIO:
    """Decrypt an encrypted weights file into a `BytesIO` (positioned at 0).

    Memory stays near one copy of the plaintext: the buffer is sized once from the
    authenticated header, then filled one chunk at a time. Nothing is returned unless every
    chunk, the file length, the plaintext hash and the pin (if any) check out.

    Raises:
        ModelIntegrityError: modified/truncated file, wrong key, pin mismatch.
        ModelProtectionError: the file cannot be opened.
    """
    return _decrypt_to_memory(Path(path), key, expected_sha256, progress)[0]


def _decrypt_to_memory(
    path: Path, key: DecryptionKey, expected_sha256: str | None, progress: Progress | None
) -> tuple[io.BytesIO, EncryptedHeader]:
    bio = io.BytesIO()

    def start(header: EncryptedHeader) -> None:
        # Size the buffer once (zero-filled) so filling it never reallocates and copies.
        if header.plaintext_length:
            bio.seek(header.plaintext_length - 1)
            bio.write(b"\0")
            bio.seek(0)

    try:
        header = _decrypt(
            path,
            key,
            expected_sha256=expected_sha256,
            start=start,
            sink=bio.write,
            progress=progress,
        )
    except BaseException:
        bio.close()
        raise
    bio.seek(0)
    return bio, header


def verify_file(
    path: str | Path,
    key: DecryptionKey,
    *,
    expected_sha256: str | None = None,
    progress: Progress | None = None,
) -> EncryptedHeader:
    """Authenticate every byte of an encrypted file without keeping the plaintext."""
    return _decrypt(
        Path(path),
        key,
        expected_sha256=expected_sha256,
        start=None,
        sink=None,
        progress=progress,
    )


def _model_directory(model_dir: str | Path) -> Path:
    directory = Path(model_dir)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise ModelProtectionError(f"model directory {directory} {what}")
    return directory


def _select_weights(
    directory: Path, key_file: str | Path | None, key_env: str, pin: str | None
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
        key = resolve_key(key_file, key_env)
        if key is None:
            raise ModelKeyError(
                f"{encrypted} is encrypted and no key is configured: set {KEY_FILE_ENV} to a key"
                f" file (chmod 600) or {key_env}"
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
    if (key_file is not None and str(key_file) != "") or os.environ.get(key_env or "", "").strip():
        raise ModelIntegrityError(
            f"a weights key is configured but {directory} holds only the unencrypted"
            f" {WEIGHTS_FILE}: refusing it (a swapped model directory?). Encrypt it with"
            f" `python -m security.model_crypto encrypt {directory} --key-file KEY`, or unset"
            f" {KEY_FILE_ENV} and {key_env} to serve plaintext weights"
        )
    return plain, None


def open_weights(
    model_dir: str | Path,
    *,
    key_file: str | Path | None = None,
    key_env: str = KEY_ENV,
    expected_sha256: str | None = None,
) -> io.BytesIO:
    """The checkpoint of `model_dir` in memory, for `load_model(model_dir, weights=...)`.

    `pytorch_model.pt.enc` is decrypted with the key of `key_file`, else of the environment
    variable `key_env`; otherwise `pytorch_model.pt` is read. The SHA-256 of the plaintext must
    equal `expected_sha256` when given. When a key is configured, an unencrypted
    `pytorch_model.pt` alone is refused (a swapped directory). The plaintext never touches disk.

    Raises:
        ModelIntegrityError: modified file, wrong key, pin mismatch, plaintext where encrypted
            weights are required.
        ModelKeyError: no key for an encrypted file, or an unusable key (file permissions...).
        ModelProtectionError: no such directory, neither weights file exists or it cannot be
            read; malformed pin.
    """
    pin = normalize_sha256(expected_sha256)
    path, key = _select_weights(_model_directory(model_dir), key_file, key_env, pin)
    if key is not None:
        bio, header = _decrypt_to_memory(path, key, pin, None)
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


def check_weights(
    model_dir: str | Path,
    *,
    key_file: str | Path | None = None,
    key_env: str = KEY_ENV,
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
    path, key = _select_weights(directory, key_file, key_env, pin)
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


# ------------------------------------------------------------------------------- encryption


@contextlib.contextmanager
def atomic_output(
    dst: str | Path, *, force: bool = False, inputs: Sequence[str | Path] = (), mode: int = 0o600
) -> Iterator[BinaryIO]:
    """Write `dst` through a temporary file in the same directory, fsync it, then rename it
    into place; on any error the temporary file is removed and `dst` is untouched.

    Raises:
        ModelProtectionError: `dst` is one of `inputs`, or exists and `force` is false.
    """
    dst = Path(dst)
    for src in inputs:
        if Path(src).exists() and dst.exists() and os.path.samefile(src, dst):
            raise ModelProtectionError(f"refusing to overwrite the input file {src}")
    if dst.is_dir():
        raise ModelProtectionError(f"{dst} is a directory")
    if dst.exists() and not force:
        raise ModelProtectionError(f"{dst} already exists (use --force to replace it)")
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ModelProtectionError(f"cannot write in {dst.parent}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        _move_into_place(tmp, dst, force=force)
        dir_fd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _move_into_place(tmp: Path, dst: Path, *, force: bool) -> None:
    if force:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)  # fails if dst appeared meanwhile: never clobber
    except FileExistsError:
        raise ModelProtectionError(f"{dst} already exists (use --force to replace it)") from None
    except OSError:  # a file system without hard links: check, then rename
        if dst.exists():
            raise ModelProtectionError(
                f"{dst} already exists (use --force to replace it)"
            ) from None
        os.replace(tmp, dst)
        return
    os.unlink(tmp)


def _default_mode() -> int:
    """0o666 less the umask, as for any new file (encrypted output need not be private)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    umask = os.umask(0o077)  # no /proc: read it the racy way
    os.umask(umask)
    return 0o666 & ~umask


def _check_chunk_size(chunk_size: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ModelProtectionError(
            f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes, not {chunk_size}"
        )


def _check_recipients(recipients: Sequence[Recipient]) -> None:
    if not 1 <= len(recipients) <= MAX_SLOTS:
        raise ModelProtectionError(f"an encrypted file has 1..{MAX_SLOTS} keys or recipients")
    for r in recipients:
        if not isinstance(r, SecretKey | rsa.RSAPublicKey):
            raise TypeError(f"not a secret key or RSA public key: {type(r).__name__}")


def encrypt_file(
    src: str | Path,
    dst: str | Path,
    recipients: Sequence[Recipient],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    force: bool = False,
    progress: Progress | None = None,
) -> EncryptedHeader:
    """Encrypt `src` into `dst` (atomically) for each of `recipients`: secret keys and/or RSA
    public keys, any one of which opens the file. Reads `src` twice (hash, then encrypt) and
    refuses if it changed in between. `progress` receives byte counts of both passes."""
    src, dst = Path(src), Path(dst)
    _check_chunk_size(chunk_size)
    _check_recipients(recipients)
    try:
        length = src.stat().st_size
        sha = bytes.fromhex(sha256_file(src, progress=progress))
    except OSError as exc:
        raise ModelProtectionError(f"cannot read {src}: {exc.strerror or exc}") from None
    if _chunk_count(length, chunk_size) > 0xFFFFFFFF:
        raise ModelProtectionError("too many chunks: use a larger chunk size")
    data_key = secrets.token_bytes(KEY_BYTES)
    file_header = _pack_file_header(chunk_size, length, sha, secrets.token_bytes(7))
    slots = [_wrap(r, data_key, file_header) for r in recipients]
    raw = _assemble_header(file_header, slots, data_key)
    header = read_header(io.BytesIO(raw), dst)
    aead = AESGCM(data_key)
    with atomic_output(dst, force=force, inputs=[src], mode=_default_mode()) as out:
        out.write(raw)
        digest, n = hashlib.sha256(), header.chunks
        with src.open("rb") as fh:
            for index in range(n):
                plain = fh.read(chunk_size)
                digest.update(plain)
                nonce = _chunk_nonce(header.nonce_prefix, index, index == n - 1)
                out.write(aead.encrypt(nonce, plain, file_header))
                if progress:
                    progress(len(plain))
            if fh.read(1) or digest.digest() != sha:
                raise ModelProtectionError(f"{src} changed while it was being encrypted")
    return header


def rewrap_file(
    src: str | Path,
    dst: str | Path,
    key: DecryptionKey,
    recipients: Sequence[Recipient],
    *,
    reencrypt: bool = True,
    force: bool = False,
    progress: Progress | None = None,
) -> EncryptedHeader:
    """Write `dst`: the plaintext of `src` (opened with `key`) for new `recipients`.

    `reencrypt=True` (the default) draws a new data key and re-encrypts every chunk, so a leaked
    old key together with the old file tells nothing about the new one: use it to rotate keys.
    `reencrypt=False` only replaces the key slots and copies the body (verified) byte for byte:
    fast, for adding or replacing recipients when the old key is not compromised.
    """
    src, dst = Path(src), Path(dst)
    _check_recipients(recipients)
    try:
        fh = src.open("rb")
    except OSError as exc:
        raise ModelProtectionError(f"cannot open {src}: {exc.strerror or exc}") from None
    with fh:
        old = read_header(fh, src)
        old_key = _open_data_key(old, key, src)
        _check_length(old, os.fstat(fh.fileno()).st_size, src)
        if reencrypt:
            data_key = secrets.token_bytes(KEY_BYTES)
            file_header = _pack_file_header(
                old.chunk_size, old.plaintext_length, old.plaintext_sha256, secrets.token_bytes(7)
            )
        else:
            data_key, file_header = old_key, old.file_header
        slots = [_wrap(r, data_key, file_header) for r in recipients]
        raw = _assemble_header(file_header, slots, data_key)
        new = read_header(io.BytesIO(raw), dst)
        aead, n = AESGCM(data_key), old.chunks
        with atomic_output(dst, force=force, inputs=[src], mode=_default_mode()) as out:
            out.write(raw)
            for index, (sealed, plain) in enumerate(_iter_chunks(fh, old, old_key, src)):
                if reencrypt:
                    nonce = _chunk_nonce(new.nonce_prefix, index, index == n - 1)
                    sealed = aead.encrypt(nonce, plain, file_header)
                out.write(sealed)
                if progress:
                    progress(len(plain) + TAG_BYTES)
    return new


__all__ = [
    "CONFIG_FILE",
    "DEFAULT_CHUNK_SIZE",
    "ENCRYPTED_WEIGHTS_FILE",
    "FORMAT_VERSION",
    "INTEGRITY_MESSAGE",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "MAGIC",
    "SHA256_ENV",
    "WEIGHTS_FILE",
    "DecryptionKey",
    "EncryptedHeader",
    "KeySlot",
    "ModelIntegrityError",
    "ModelKeyError",
    "ModelProtectionError",
    "Recipient",
    "SecretKey",
    "WeightsCheck",
    "atomic_output",
    "check_pin",
    "check_weights",
    "decrypt_to_memory",
    "encrypt_file",
    "format_secret_key",
    "generate_rsa_key",
    "generate_secret_key",
    "key_from_env",
    "key_id",
    "normalize_sha256",
    "open_weights",
    "parse_decryption_key",
    "parse_secret_key",
    "read_header",
    "read_key_file",
    "read_public_key",
    "resolve_key",
    "rewrap_file",
    "sha256_file",
    "verify_file",
]


if __name__ == "__main__":
    from security.model_crypto_cli import main

    raise SystemExit(main())
