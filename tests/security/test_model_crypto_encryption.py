"""security/model_crypto/encryption.py: round trips of every size and recipient, decryption that
returns nothing on failure, rewrap, and the rules for output files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from security import model_crypto as mc
from security.model_crypto.container import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from tests.support import crypto_files as cf
from tests.support.crypto_files import CHUNK, PAYLOAD


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, len(PAYLOAD)], ids=lambda n: f"{n}B"
)
def test_round_trip_sizes(tmp_path: Path, secret: mc.SecretKey, size: int) -> None:
    payload = PAYLOAD[:size]
    enc = cf.encrypt(tmp_path, [secret], payload)
    header = cf.header(enc)
    assert header.chunks == max(1, -(-size // CHUNK))
    assert enc.stat().st_size == header.file_length
    bio = mc.decrypt_to_memory(enc, secret)
    assert isinstance(bio, io.BytesIO) and bio.tell() == 0
    assert bio.read() == payload
    if size >= 32:
        assert payload[:32] not in enc.read_bytes()


def test_each_recipient_opens_the_file(tmp_path: Path, secret, rsa_key) -> None:
    other = mc.generate_secret_key()
    enc = cf.encrypt(tmp_path, [secret, rsa_key.public_key(), other])
    assert cf.header(enc).key_ids == (secret.key_id, mc.key_id(rsa_key), other.key_id)
    for key in (secret, rsa_key, other):
        assert mc.decrypt_to_memory(enc, key).getvalue() == PAYLOAD


def test_failed_decryption_returns_nothing(tmp_path, secret) -> None:
    """A tamper in the last chunk is found after the earlier chunks were decrypted: the
    caller still gets an exception, never a partial buffer."""
    enc = cf.encrypt(tmp_path, [secret])
    bad = cf.flip(enc, enc.stat().st_size - 1, tmp_path / "bad.enc")
    result = None
    with pytest.raises(mc.ModelIntegrityError, match="chunk 5 of 5"):
        result = mc.decrypt_to_memory(bad, secret)
    assert result is None


def test_rewrap_reencrypts_for_a_new_key(tmp_path, secret) -> None:
    enc = cf.encrypt(tmp_path, [secret])
    new_key = mc.generate_secret_key()
    out = tmp_path / "new.enc"
    header = mc.rewrap_file(enc, out, secret, [new_key])
    assert header.key_ids == (new_key.key_id,)
    assert mc.decrypt_to_memory(out, new_key).getvalue() == PAYLOAD
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(out, secret)
    old_body = enc.read_bytes()[len(cf.header(enc).raw) :]
    new_body = out.read_bytes()[len(header.raw) :]
    assert len(old_body) == len(new_body) and old_body[:CHUNK] != new_body[:CHUNK]


def test_rewrap_keep_data_key_copies_the_body(tmp_path, secret, rsa_key) -> None:
    enc = cf.encrypt(tmp_path, [secret])
    out = tmp_path / "kiosk.enc"
    header = mc.rewrap_file(enc, out, secret, [rsa_key.public_key()], reencrypt=False)
    assert out.read_bytes()[len(header.raw) :] == enc.read_bytes()[len(cf.header(enc).raw) :]
    assert mc.decrypt_to_memory(out, rsa_key).getvalue() == PAYLOAD
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(out, secret)


@pytest.mark.parametrize("reencrypt", [True, False])
def test_failed_rewrap_leaves_no_output(tmp_path, secret, reencrypt: bool) -> None:
    enc = cf.encrypt(tmp_path, [secret])
    bad = cf.flip(enc, enc.stat().st_size - 1, tmp_path / "bad.enc")
    out = tmp_path / "out.enc"
    with pytest.raises(mc.ModelIntegrityError, match="chunk 5 of 5"):
        mc.rewrap_file(bad, out, secret, [mc.generate_secret_key()], reencrypt=reencrypt)
    assert not out.exists() and cf.leftovers(tmp_path) == []


def test_encrypt_output_rules(tmp_path, secret) -> None:
    enc = cf.encrypt(tmp_path, [secret])
    before = enc.read_bytes()
    with pytest.raises(mc.ModelProtectionError, match="already exists"):
        mc.encrypt_file(tmp_path / "w.bin", enc, [secret])
    assert enc.read_bytes() == before
    mc.encrypt_file(tmp_path / "w.bin", enc, [secret], force=True)
    assert enc.read_bytes() != before
    assert mc.decrypt_to_memory(enc, secret).getvalue() == PAYLOAD
    with pytest.raises(mc.ModelProtectionError, match="refusing to overwrite the input"):
        mc.encrypt_file(tmp_path / "w.bin", tmp_path / "w.bin", [secret], force=True)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD
    with pytest.raises(mc.ModelProtectionError, match="refusing to overwrite the input"):
        mc.rewrap_file(enc, enc, secret, [secret], force=True)
    assert cf.leftovers(tmp_path) == []


def test_encrypt_rejects_bad_chunk_size(tmp_path, secret) -> None:
    src = cf.write(tmp_path / "w.bin", PAYLOAD)
    for size in (MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1):
        with pytest.raises(mc.ModelProtectionError, match="chunk size"):
            mc.encrypt_file(src, tmp_path / "w.enc", [secret], chunk_size=size)
    assert not (tmp_path / "w.enc").exists()
