"""Files for the tests of `security.model_crypto`: a payload of five chunks, encrypted files,
key files with a given mode, model directories, and byte flips."""

from __future__ import annotations

import random
from pathlib import Path

from security import model_crypto as mc

CHUNK = 1024
PAYLOAD = random.Random(0).randbytes(4 * CHUNK + 300)  # 5 chunks, the last one short


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def encrypt(tmp_path: Path, recipients: list, payload: bytes = PAYLOAD, name="w") -> Path:
    """`payload` encrypted in chunks of CHUNK bytes into `tmp_path/<name>.enc`."""
    src = write(tmp_path / f"{name}.bin", payload)
    dst = tmp_path / f"{name}.enc"
    mc.encrypt_file(src, dst, recipients, chunk_size=CHUNK)
    return dst


def header(path: Path) -> mc.EncryptedHeader:
    with path.open("rb") as fh:
        return mc.read_header(fh, path)


def flip(path: Path, position: int, out: Path) -> Path:
    """A copy of `path` at `out` with every bit of one byte inverted."""
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    return write(out, bytes(data))


def key_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def model_dir(tmp_path: Path, payload: bytes = PAYLOAD) -> Path:
    """`tmp_path/model` holding `payload` as its plaintext weights."""
    directory = tmp_path / "model"
    directory.mkdir()
    write(directory / mc.WEIGHTS_FILE, payload)
    return directory


def encrypt_dir(directory: Path, recipients: list, *, keep_plain: bool = False) -> Path:
    """Encrypt the weights of `directory` in place, removing the plaintext unless kept."""
    plain = directory / mc.WEIGHTS_FILE
    mc.encrypt_file(plain, directory / mc.ENCRYPTED_WEIGHTS_FILE, recipients, chunk_size=CHUNK)
    if not keep_plain:
        plain.unlink()
    return directory


def leftovers(directory: Path) -> list[str]:
    """Temporary files an interrupted atomic write would have left."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))
