"""Whole files in the format of `container.py`: encrypt, decrypt into memory, verify, rewrap.

Nothing is returned unless every chunk, the file length, the plaintext hash and the pin (if
any) check out, and no plaintext is ever written to disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from security.model_crypto.atomic import atomic_output, default_mode
from security.model_crypto.container import (
    DEFAULT_CHUNK_SIZE,
    TAG_BYTES,
    EncryptedHeader,
    assemble_header,
    check_chunk_size,
    check_length,
    check_recipients,
    chunk_count,
    chunk_nonce,
    iter_chunks,
    open_data_key,
    pack_file_header,
    read_header,
    wrap,
)
from security.model_crypto.exceptions import ModelProtectionError
from security.model_crypto.keys import KEY_BYTES, DecryptionKey, Recipient
from security.model_crypto.pinning import Progress, check_pin, sha256_file


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
    check_chunk_size(chunk_size)
    check_recipients(recipients)
    try:
        length = src.stat().st_size
        sha = bytes.fromhex(sha256_file(src, progress=progress))
    except OSError as exc:
        raise ModelProtectionError(f"cannot read {src}: {exc.strerror or exc}") from None
    if chunk_count(length, chunk_size) > 0xFFFFFFFF:
        raise ModelProtectionError("too many chunks: use a larger chunk size")
    data_key = secrets.token_bytes(KEY_BYTES)
    file_header = pack_file_header(chunk_size, length, sha)
    slots = [wrap(r, data_key, file_header) for r in recipients]
    raw = assemble_header(file_header, slots, data_key)
    header = read_header(io.BytesIO(raw), dst)
    aead = AESGCM(data_key)
    with atomic_output(dst, force=force, inputs=[src], mode=default_mode()) as out:
        out.write(raw)
        digest, n = hashlib.sha256(), header.chunks
        with src.open("rb") as fh:
            for index in range(n):
                plain = fh.read(chunk_size)
                digest.update(plain)
                nonce = chunk_nonce(header.nonce_prefix, index, index == n - 1)
                out.write(aead.encrypt(nonce, plain, file_header))
                if progress:
                    progress(len(plain))
            if fh.read(1) or digest.digest() != sha:
                raise ModelProtectionError(f"{src} changed while it was being encrypted")
    return header


@contextlib.contextmanager
def _opened(path: Path, key: DecryptionKey) -> Iterator[tuple[BinaryIO, EncryptedHeader, bytes]]:
    """`path` positioned at its first chunk, its header authenticated with `key` and its length
    checked, with the header and the data key."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ModelProtectionError(f"cannot open {path}: {exc.strerror or exc}") from None
    with fh:
        header = read_header(fh, path)
        data_key = open_data_key(header, key, path)
        check_length(header, os.fstat(fh.fileno()).st_size, path)
        yield fh, header, data_key


def _decrypt(
    path: Path,
    key: DecryptionKey,
    *,
    expected_sha256: str | None,
    start: Callable[[EncryptedHeader], None] | None,
    sink: Callable[[bytes], object] | None,
    progress: Progress | None,
) -> EncryptedHeader:
    with _opened(path, key) as (fh, header, data_key):
        # The header is authentic now: refuse a wrong model before decrypting it.
        check_pin(header.sha256, expected_sha256, path)
        if start:
            start(header)
        for sealed, plain in iter_chunks(fh, header, data_key, path):
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
    bio, _ = decrypt_with_header(
        Path(path), key, expected_sha256=expected_sha256, progress=progress
    )
    return bio


def decrypt_with_header(
    path: Path,
    key: DecryptionKey,
    *,
    expected_sha256: str | None = None,
    progress: Progress | None = None,
) -> tuple[io.BytesIO, EncryptedHeader]:
    """`decrypt_to_memory`, and the authenticated header (its size and hash, for the log)."""
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
    check_recipients(recipients)
    with _opened(src, key) as (fh, old, old_key):
        if reencrypt:
            data_key = secrets.token_bytes(KEY_BYTES)
            file_header = pack_file_header(
                old.chunk_size, old.plaintext_length, old.plaintext_sha256
            )
        else:
            data_key, file_header = old_key, old.file_header
        slots = [wrap(r, data_key, file_header) for r in recipients]
        raw = assemble_header(file_header, slots, data_key)
        new = read_header(io.BytesIO(raw), dst)
        aead, n = AESGCM(data_key), old.chunks
        with atomic_output(dst, force=force, inputs=[src], mode=default_mode()) as out:
            out.write(raw)
            for index, (sealed, plain) in enumerate(iter_chunks(fh, old, old_key, src)):
                if reencrypt:
                    nonce = chunk_nonce(new.nonce_prefix, index, index == n - 1)
                    sealed = aead.encrypt(nonce, plain, file_header)
                out.write(sealed)
                if progress:
                    progress(len(plain) + TAG_BYTES)
    return new


__all__ = ["decrypt_to_memory", "encrypt_file", "rewrap_file", "verify_file"]
