"""security/model_crypto/container.py: the file format refuses every changed, missing, added
or reordered byte, and any key but the right one."""

from __future__ import annotations

from pathlib import Path

import pytest

from security import model_crypto as mc
from security.model_crypto.container import SLOT_SECRET_KEY, TAG_BYTES, KeySlot
from tests.support import crypto_files as cf
from tests.support.crypto_files import CHUNK, PAYLOAD


def test_two_encryptions_differ(tmp_path: Path, secret) -> None:
    a = cf.encrypt(tmp_path, [secret], name="a").read_bytes()
    b = cf.encrypt(tmp_path, [secret], name="b").read_bytes()
    assert a[:24] == b[:24]  # magic, version, sizes
    assert a[56:63] != b[56:63]  # fresh nonce prefix
    assert a[200:] != b[200:]  # and a fresh data key


def _regions(h: int, file_length: int) -> dict[str, int]:
    """Named byte positions, one per region of a single-secret-key file with a header of `h`
    bytes."""
    last = file_length - (len(PAYLOAD) % CHUNK + TAG_BYTES)
    return {
        "magic": 0,
        "version": 8,
        "algorithm": 9,
        "reserved": 11,
        "chunk_size": 14,
        "length": 23,
        "sha256": 40,
        "nonce_prefix": 60,
        "reserved_end": 63,
        "slot_count": 64,
        "slot_kind": 65,
        "slot_key_id": 70,
        "slot_length": 75,
        "slot_nonce": 80,
        "slot_wrapped_key": 100,
        "slot_tag": h - TAG_BYTES - 1,
        "header_tag_first": h - TAG_BYTES,
        "header_tag_last": h - 1,
        "chunk1_first": h,
        "chunk1_middle": h + CHUNK // 2,
        "chunk1_tag": h + CHUNK,
        "chunk3_body": h + 2 * (CHUNK + TAG_BYTES) + 7,
        "chunk3_tag_last": h + 3 * (CHUNK + TAG_BYTES) - 1,
        "last_chunk_body": last + 5,
        "last_tag_first": file_length - TAG_BYTES,
        "last_byte": file_length - 1,
    }


REGIONS = list(_regions(152, 9999))


@pytest.mark.parametrize("region", REGIONS)
def test_flipped_byte_in_each_region_is_refused(tmp_path: Path, secret, region: str) -> None:
    enc = cf.encrypt(tmp_path, [secret])
    position = _regions(len(cf.header(enc).raw), enc.stat().st_size)[region]
    bad = cf.flip(enc, position, tmp_path / "bad.enc")
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(bad, secret)


def test_every_single_byte_flip_is_refused(tmp_path: Path, secret) -> None:
    enc = cf.encrypt(tmp_path, [secret])
    data = enc.read_bytes()
    for position in range(len(data)):
        bad = bytearray(data)
        bad[position] ^= 0x01
        cf.write(tmp_path / "bad.enc", bytes(bad))
        with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
            mc.verify_file(tmp_path / "bad.enc", secret)


def test_every_header_byte_flip_is_refused_in_envelope_mode(tmp_path: Path, rsa_key) -> None:
    enc = cf.encrypt(tmp_path, [rsa_key.public_key()])
    data, header_length = enc.read_bytes(), len(cf.header(enc).raw)
    for position in range(header_length):
        bad = bytearray(data)
        bad[position] ^= 0x80
        cf.write(tmp_path / "bad.enc", bytes(bad))
        with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
            mc.verify_file(tmp_path / "bad.enc", rsa_key)


def _truncations(data: bytes, header_length: int) -> dict[str, bytes]:
    last = len(PAYLOAD) % CHUNK + TAG_BYTES
    return {
        "empty": b"",
        "inside_magic": data[:5],
        "inside_header": data[: header_length - 1],
        "header_only": data[:header_length],
        "inside_chunk": data[: header_length + 100],
        "last_tag_dropped": data[:-TAG_BYTES],
        "one_byte_short": data[:-1],
        "last_chunk_dropped": data[:-last],
    }


@pytest.mark.parametrize("case", list(_truncations(b"x" * 9999, 152)))
def test_truncation_is_refused(tmp_path: Path, secret, case: str) -> None:
    enc = cf.encrypt(tmp_path, [secret])
    data = _truncations(enc.read_bytes(), len(cf.header(enc).raw))[case]
    bad = cf.write(tmp_path / "bad.enc", data)
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(bad, secret)


@pytest.mark.parametrize(
    "extra",
    [b"\0", b"\0" * TAG_BYTES, "last_chunk_again"],
    ids=["one_byte", "a_tag", "last_chunk_again"],
)
def test_appended_bytes_are_refused(tmp_path: Path, secret, extra) -> None:
    enc = cf.encrypt(tmp_path, [secret])
    data = enc.read_bytes()
    if extra == "last_chunk_again":
        extra = data[-(len(PAYLOAD) % CHUNK + TAG_BYTES) :]
    bad = cf.write(tmp_path / "bad.enc", data + extra)
    with pytest.raises(mc.ModelIntegrityError, match="unexpected bytes after the end"):
        mc.decrypt_to_memory(bad, secret)


def _sealed_chunks(enc: Path) -> tuple[bytes, list[bytes]]:
    data, h = enc.read_bytes(), len(cf.header(enc).raw)
    step = CHUNK + TAG_BYTES
    return data[:h], [data[i : i + step] for i in range(h, len(data), step)]


@pytest.mark.parametrize(
    "order",
    [(1, 0, 2, 3, 4), (0, 2, 1, 3, 4), (0, 0, 2, 3, 4), (0, 1, 2, 3, 3), (4, 1, 2, 3, 0)],
    ids=["swap_first_two", "swap_middle", "duplicate_first", "duplicate_penultimate", "ends"],
)
def test_reordered_or_duplicated_chunks_are_refused(tmp_path: Path, secret, order) -> None:
    enc = cf.encrypt(tmp_path, [secret])
    head, chunks = _sealed_chunks(enc)
    assert len(chunks) == 5
    bad = cf.write(tmp_path / "bad.enc", head + b"".join(chunks[i] for i in order))
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(bad, secret)


def test_chunk_from_another_file_is_refused(tmp_path: Path, secret) -> None:
    a, b = cf.encrypt(tmp_path, [secret], name="a"), cf.encrypt(tmp_path, [secret], name="b")
    head, chunks = _sealed_chunks(a)
    chunks[2] = _sealed_chunks(b)[1][2]
    bad = cf.write(tmp_path / "bad.enc", head + b"".join(chunks))
    with pytest.raises(mc.ModelIntegrityError, match="chunk 3 of 5"):
        mc.decrypt_to_memory(bad, secret)


def test_extra_key_slot_is_refused(tmp_path: Path, secret) -> None:
    """Adding a recipient needs the data key: a slot spliced into the header is caught."""
    enc = cf.encrypt(tmp_path, [secret])
    data, header = enc.read_bytes(), cf.header(enc)
    stranger = KeySlot(SLOT_SECRET_KEY, b"\1" * 8, b"\0" * 60).to_bytes()
    bad = data[:64] + bytes([2]) + data[65 : len(header.raw) - 16] + stranger
    bad += data[len(header.raw) - 16 :]
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(cf.write(tmp_path / "bad.enc", bad), secret)


def test_wrong_secret_key_names_both_key_ids(tmp_path: Path, secret) -> None:
    enc = cf.encrypt(tmp_path, [secret])
    wrong = mc.generate_secret_key()
    with pytest.raises(mc.ModelIntegrityError) as info:
        mc.decrypt_to_memory(enc, wrong)
    message = str(info.value)
    assert mc.INTEGRITY_MESSAGE in message
    assert secret.key_id in message and wrong.key_id in message


def test_wrong_private_key_is_refused(tmp_path: Path, rsa_key) -> None:
    enc = cf.encrypt(tmp_path, [rsa_key.public_key()])
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(enc, mc.generate_rsa_key(2048))


def test_secret_key_cannot_open_envelope_file(tmp_path: Path, secret, rsa_key) -> None:
    enc = cf.encrypt(tmp_path, [rsa_key.public_key()])
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(enc, secret)


def test_slot_with_forged_key_id_is_refused(tmp_path: Path, secret) -> None:
    """A wrong key whose id was written into the slot still fails to unwrap."""
    enc = cf.encrypt(tmp_path, [secret])
    wrong = mc.generate_secret_key()
    data = bytearray(enc.read_bytes())
    data[66:74] = bytes.fromhex(wrong.key_id)
    bad = cf.write(tmp_path / "bad.enc", bytes(data))
    with pytest.raises(mc.ModelIntegrityError, match=r"\(header or key slot\)"):
        mc.decrypt_to_memory(bad, wrong)
