"""The encrypted file format, version 1: its header, key slots and authenticated chunks.

Integers are big-endian.

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
`ModelIntegrityError`. Key slots can be replaced without touching the body.

This module reads and builds the pieces; `encryption.py` runs them over whole files.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from security.model_crypto.exceptions import ModelIntegrityError, ModelProtectionError
from security.model_crypto.keys import (
    KEY_BYTES,
    MAX_RSA_BYTES,
    MIN_RSA_BITS,
    DecryptionKey,
    Recipient,
    SecretKey,
    key_id_bytes,
)

MAGIC = b"\x89M2FPENC"
FORMAT_VERSION = 1
ALGORITHM_AES256GCM_CHUNKED = 1
SLOT_SECRET_KEY = 1
SLOT_RSA_OAEP_SHA256 = 2
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 7
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 10
MAX_CHUNK_SIZE = 1 << 26
MAX_SLOTS = 16
INTEGRITY_MESSAGE = "the encrypted model file has been modified or the key is wrong"

_FILE_HEADER = struct.Struct(">8sBBHIQ32s7sB")  # 64 bytes
_SLOT_HEAD = struct.Struct(">B8sH")
_GCM_NONCE_BYTES = 12
_SECRET_WRAP_BYTES = _GCM_NONCE_BYTES + KEY_BYTES + TAG_BYTES
_HEADER_TAG_NONCE_SUFFIX = b"\xff\xff\xff\xff\x02"


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
        return chunk_count(self.plaintext_length, self.chunk_size)

    @property
    def file_length(self) -> int:
        return len(self.raw) + self.plaintext_length + TAG_BYTES * self.chunks


def chunk_count(length: int, chunk_size: int) -> int:
    return max(1, -(-length // chunk_size))


def chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def integrity_error(path: Path | str, detail: str) -> ModelIntegrityError:
    """The one refusal message of the format, with `detail` saying which part failed."""
    return ModelIntegrityError(f"{path}: {INTEGRITY_MESSAGE} ({detail})")


def check_chunk_size(chunk_size: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ModelProtectionError(
            f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes, not {chunk_size}"
        )


def check_recipients(recipients: Sequence[Recipient]) -> None:
    if not 1 <= len(recipients) <= MAX_SLOTS:
        raise ModelProtectionError(f"an encrypted file has 1..{MAX_SLOTS} keys or recipients")
    for r in recipients:
        if not isinstance(r, SecretKey | rsa.RSAPublicKey):
            raise TypeError(f"not a secret key or RSA public key: {type(r).__name__}")


# ----------------------------------------------------------------------------------- writing


def pack_file_header(chunk_size: int, length: int, sha: bytes) -> bytes:
    """The 64 fixed bytes of a new file, with a fresh random nonce prefix."""
    prefix = secrets.token_bytes(NONCE_PREFIX_BYTES)
    return _FILE_HEADER.pack(
        MAGIC, FORMAT_VERSION, ALGORITHM_AES256GCM_CHUNKED, 0, chunk_size, length, sha, prefix, 0
    )


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def wrap(recipient: Recipient, data_key: bytes, file_header: bytes) -> KeySlot:
    """The key slot that gives `data_key` to `recipient`."""
    kid = key_id_bytes(recipient)
    if isinstance(recipient, SecretKey):
        aad = file_header + bytes([SLOT_SECRET_KEY]) + kid
        nonce = secrets.token_bytes(_GCM_NONCE_BYTES)
        wrapped = nonce + AESGCM(recipient.material).encrypt(nonce, data_key, aad)
        return KeySlot(SLOT_SECRET_KEY, kid, wrapped)
    if isinstance(recipient, rsa.RSAPublicKey):
        label = file_header + bytes([SLOT_RSA_OAEP_SHA256]) + kid
        return KeySlot(SLOT_RSA_OAEP_SHA256, kid, recipient.encrypt(data_key, _oaep(label)))
    raise TypeError(f"not a recipient key: {type(recipient).__name__}")


def assemble_header(file_header: bytes, slots: Sequence[KeySlot], data_key: bytes) -> bytes:
    """Every header byte: the file header, the key slots, and the tag over both."""
    if not 1 <= len(slots) <= MAX_SLOTS:
        raise ModelProtectionError(f"an encrypted file has 1..{MAX_SLOTS} keys or recipients")
    body = file_header + bytes([len(slots)]) + b"".join(s.to_bytes() for s in slots)
    prefix = file_header[56:63]
    tag = AESGCM(data_key).encrypt(prefix + _HEADER_TAG_NONCE_SUFFIX, b"", body)
    return body + tag


# ----------------------------------------------------------------------------------- reading


def _read_exact(fh: BinaryIO, n: int, path: Path | str, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise integrity_error(path, f"file ends inside the {what}")
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
        raise integrity_error(path, "no M2FP encryption header: is this an encrypted model?")
    if version != FORMAT_VERSION:
        raise integrity_error(path, f"unknown format version {version}")
    if algorithm != ALGORITHM_AES256GCM_CHUNKED or reserved or reserved2:
        raise integrity_error(path, "unknown algorithm or flags in the header")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise integrity_error(path, "chunk size out of range in the header")
    if chunk_count(length, chunk_size) > 0xFFFFFFFF:
        raise integrity_error(path, "plaintext length out of range in the header")
    count = _read_exact(fh, 1, path, "header")[0]
    if not 1 <= count <= MAX_SLOTS:
        raise integrity_error(path, "bad key slot count in the header")
    parts, slots = [file_header, bytes([count])], []
    for _ in range(count):
        head = _read_exact(fh, _SLOT_HEAD.size, path, "key slots")
        kind, kid, size = _SLOT_HEAD.unpack(head)
        valid = (kind == SLOT_SECRET_KEY and size == _SECRET_WRAP_BYTES) or (
            kind == SLOT_RSA_OAEP_SHA256 and MIN_RSA_BITS // 8 <= size <= MAX_RSA_BYTES
        )
        if not valid:
            raise integrity_error(path, "bad key slot in the header")
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


def open_data_key(header: EncryptedHeader, key: DecryptionKey, path: Path | str) -> bytes:
    """Unwrap the data key with `key` and authenticate the whole header with it."""
    kid = key_id_bytes(key)
    matching = [s for s in header.slots if s.key_id == kid]
    if not matching:
        ids = ("key ids " if len(header.slots) > 1 else "key id ") + ", ".join(header.key_ids)
        raise integrity_error(
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
    raise integrity_error(path, "header or key slot")


def iter_chunks(
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
            raise integrity_error(path, f"truncated in chunk {index + 1} of {n}")
        nonce = chunk_nonce(header.nonce_prefix, index, index == n - 1)
        try:
            plain = aead.decrypt(nonce, sealed, header.file_header)
        except InvalidTag:
            raise integrity_error(path, f"chunk {index + 1} of {n}") from None
        remaining -= size
        digest.update(plain)
        yield sealed, plain
    if fh.read(1):
        raise integrity_error(path, "unexpected data after the last chunk")
    if digest.digest() != header.plaintext_sha256:
        raise integrity_error(path, "the plaintext does not match the SHA-256 in the header")


def check_length(header: EncryptedHeader, size: int, path: Path | str) -> None:
    """Refuse a file whose size is not the one its header implies."""
    expected = header.file_length
    if size < expected:
        raise integrity_error(path, f"truncated: {expected - size} bytes missing")
    if size > expected:
        raise integrity_error(path, f"{size - expected} unexpected bytes after the end")


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "INTEGRITY_MESSAGE",
    "MAGIC",
    "SLOT_RSA_OAEP_SHA256",
    "SLOT_SECRET_KEY",
    "TAG_BYTES",
    "EncryptedHeader",
    "KeySlot",
    "read_header",
]
