"""security.model_crypto: encrypted weights round trips, tamper detection, keys, pins."""

from __future__ import annotations

import base64
import io
import logging
import os
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from inotify_simple import INotify
from inotify_simple import flags as inflags

from security import model_crypto as mc
from tests.support.paths import REPO

CHUNK = 1024
PAYLOAD = random.Random(0).randbytes(4 * CHUNK + 300)  # 5 chunks, the last one short


@pytest.fixture(scope="module")
def secret() -> mc.SecretKey:
    return mc.generate_secret_key()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return mc.generate_rsa_key(2048)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _encrypt(tmp_path: Path, recipients: list, payload: bytes = PAYLOAD, name="w") -> Path:
    src = _write(tmp_path / f"{name}.bin", payload)
    dst = tmp_path / f"{name}.enc"
    mc.encrypt_file(src, dst, recipients, chunk_size=CHUNK)
    return dst


def _header(path: Path) -> mc.EncryptedHeader:
    with path.open("rb") as fh:
        return mc.read_header(fh, path)


def _flip(path: Path, position: int, out: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    return _write(out, bytes(data))


def _key_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, len(PAYLOAD)], ids=lambda n: f"{n}B"
)
def test_round_trip_sizes(tmp_path: Path, secret: mc.SecretKey, size: int) -> None:
    payload = PAYLOAD[:size]
    enc = _encrypt(tmp_path, [secret], payload)
    header = _header(enc)
    assert header.chunks == max(1, -(-size // CHUNK))
    assert enc.stat().st_size == header.file_length
    bio = mc.decrypt_to_memory(enc, secret)
    assert isinstance(bio, io.BytesIO) and bio.tell() == 0
    assert bio.read() == payload
    if size >= 32:
        assert payload[:32] not in enc.read_bytes()


def test_each_recipient_opens_the_file(tmp_path: Path, secret, rsa_key) -> None:
    other = mc.generate_secret_key()
    enc = _encrypt(tmp_path, [secret, rsa_key.public_key(), other])
    assert _header(enc).key_ids == (secret.key_id, mc.key_id(rsa_key), other.key_id)
    for key in (secret, rsa_key, other):
        assert mc.decrypt_to_memory(enc, key).getvalue() == PAYLOAD


def test_two_encryptions_differ(tmp_path: Path, secret) -> None:
    a = _encrypt(tmp_path, [secret], name="a").read_bytes()
    b = _encrypt(tmp_path, [secret], name="b").read_bytes()
    assert a[:24] == b[:24]  # magic, version, sizes
    assert a[56:63] != b[56:63]  # fresh nonce prefix
    assert a[200:] != b[200:]  # and a fresh data key


# --------------------------------------------------------------------------- tamper detection


def _regions(h: int, file_length: int) -> dict[str, int]:
    """Named byte positions, one per region of a single-secret-key file with a header of `h`
    bytes."""
    last = file_length - (len(PAYLOAD) % CHUNK + mc.TAG_BYTES)
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
        "slot_tag": h - mc.TAG_BYTES - 1,
        "header_tag_first": h - mc.TAG_BYTES,
        "header_tag_last": h - 1,
        "chunk1_first": h,
        "chunk1_middle": h + CHUNK // 2,
        "chunk1_tag": h + CHUNK,
        "chunk3_body": h + 2 * (CHUNK + mc.TAG_BYTES) + 7,
        "chunk3_tag_last": h + 3 * (CHUNK + mc.TAG_BYTES) - 1,
        "last_chunk_body": last + 5,
        "last_tag_first": file_length - mc.TAG_BYTES,
        "last_byte": file_length - 1,
    }


REGIONS = list(_regions(152, 9999))


@pytest.mark.parametrize("region", REGIONS)
def test_flipped_byte_in_each_region_is_refused(tmp_path: Path, secret, region: str) -> None:
    enc = _encrypt(tmp_path, [secret])
    position = _regions(len(_header(enc).raw), enc.stat().st_size)[region]
    bad = _flip(enc, position, tmp_path / "bad.enc")
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(bad, secret)


def test_every_single_byte_flip_is_refused(tmp_path: Path, secret) -> None:
    enc = _encrypt(tmp_path, [secret])
    data = enc.read_bytes()
    for position in range(len(data)):
        bad = bytearray(data)
        bad[position] ^= 0x01
        _write(tmp_path / "bad.enc", bytes(bad))
        with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
            mc.verify_file(tmp_path / "bad.enc", secret)


def test_every_header_byte_flip_is_refused_in_envelope_mode(tmp_path: Path, rsa_key) -> None:
    enc = _encrypt(tmp_path, [rsa_key.public_key()])
    data, header_length = enc.read_bytes(), len(_header(enc).raw)
    for position in range(header_length):
        bad = bytearray(data)
        bad[position] ^= 0x80
        _write(tmp_path / "bad.enc", bytes(bad))
        with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
            mc.verify_file(tmp_path / "bad.enc", rsa_key)


def _truncations(data: bytes, header_length: int) -> dict[str, bytes]:
    last = len(PAYLOAD) % CHUNK + mc.TAG_BYTES
    return {
        "empty": b"",
        "inside_magic": data[:5],
        "inside_header": data[: header_length - 1],
        "header_only": data[:header_length],
        "inside_chunk": data[: header_length + 100],
        "last_tag_dropped": data[: -mc.TAG_BYTES],
        "one_byte_short": data[:-1],
        "last_chunk_dropped": data[:-last],
    }


@pytest.mark.parametrize("case", list(_truncations(b"x" * 9999, 152)))
def test_truncation_is_refused(tmp_path: Path, secret, case: str) -> None:
    enc = _encrypt(tmp_path, [secret])
    data = _truncations(enc.read_bytes(), len(_header(enc).raw))[case]
    bad = _write(tmp_path / "bad.enc", data)
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(bad, secret)


@pytest.mark.parametrize(
    "extra",
    [b"\0", b"\0" * mc.TAG_BYTES, "last_chunk_again"],
    ids=["one_byte", "a_tag", "last_chunk_again"],
)
def test_appended_bytes_are_refused(tmp_path: Path, secret, extra) -> None:
    enc = _encrypt(tmp_path, [secret])
    data = enc.read_bytes()
    if extra == "last_chunk_again":
        extra = data[-(len(PAYLOAD) % CHUNK + mc.TAG_BYTES) :]
    bad = _write(tmp_path / "bad.enc", data + extra)
    with pytest.raises(mc.ModelIntegrityError, match="unexpected bytes after the end"):
        mc.decrypt_to_memory(bad, secret)


def _sealed_chunks(enc: Path) -> tuple[bytes, list[bytes]]:
    data, h = enc.read_bytes(), len(_header(enc).raw)
    step = CHUNK + mc.TAG_BYTES
    return data[:h], [data[i : i + step] for i in range(h, len(data), step)]


@pytest.mark.parametrize(
    "order",
    [(1, 0, 2, 3, 4), (0, 2, 1, 3, 4), (0, 0, 2, 3, 4), (0, 1, 2, 3, 3), (4, 1, 2, 3, 0)],
    ids=["swap_first_two", "swap_middle", "duplicate_first", "duplicate_penultimate", "ends"],
)
def test_reordered_or_duplicated_chunks_are_refused(tmp_path: Path, secret, order) -> None:
    enc = _encrypt(tmp_path, [secret])
    head, chunks = _sealed_chunks(enc)
    assert len(chunks) == 5
    bad = _write(tmp_path / "bad.enc", head + b"".join(chunks[i] for i in order))
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(bad, secret)


def test_chunk_from_another_file_is_refused(tmp_path: Path, secret) -> None:
    a, b = _encrypt(tmp_path, [secret], name="a"), _encrypt(tmp_path, [secret], name="b")
    head, chunks = _sealed_chunks(a)
    chunks[2] = _sealed_chunks(b)[1][2]
    bad = _write(tmp_path / "bad.enc", head + b"".join(chunks))
    with pytest.raises(mc.ModelIntegrityError, match="chunk 3 of 5"):
        mc.decrypt_to_memory(bad, secret)


def test_extra_key_slot_is_refused(tmp_path: Path, secret) -> None:
    """Adding a recipient needs the data key: a slot spliced into the header is caught."""
    enc = _encrypt(tmp_path, [secret])
    data, header = enc.read_bytes(), _header(enc)
    stranger = mc.KeySlot(mc.SLOT_SECRET_KEY, b"\1" * 8, b"\0" * 60).to_bytes()
    bad = data[:64] + bytes([2]) + data[65 : len(header.raw) - 16] + stranger
    bad += data[len(header.raw) - 16 :]
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(_write(tmp_path / "bad.enc", bad), secret)


# -------------------------------------------------------------------------------- wrong keys


def test_wrong_secret_key_names_both_key_ids(tmp_path: Path, secret) -> None:
    enc = _encrypt(tmp_path, [secret])
    wrong = mc.generate_secret_key()
    with pytest.raises(mc.ModelIntegrityError) as info:
        mc.decrypt_to_memory(enc, wrong)
    message = str(info.value)
    assert mc.INTEGRITY_MESSAGE in message
    assert secret.key_id in message and wrong.key_id in message


def test_wrong_private_key_is_refused(tmp_path: Path, rsa_key) -> None:
    enc = _encrypt(tmp_path, [rsa_key.public_key()])
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(enc, mc.generate_rsa_key(2048))


def test_secret_key_cannot_open_envelope_file(tmp_path: Path, secret, rsa_key) -> None:
    enc = _encrypt(tmp_path, [rsa_key.public_key()])
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(enc, secret)


def test_slot_with_forged_key_id_is_refused(tmp_path: Path, secret) -> None:
    """A wrong key whose id was written into the slot still fails to unwrap."""
    enc = _encrypt(tmp_path, [secret])
    wrong = mc.generate_secret_key()
    data = bytearray(enc.read_bytes())
    data[66:74] = bytes.fromhex(wrong.key_id)
    bad = _write(tmp_path / "bad.enc", bytes(data))
    with pytest.raises(mc.ModelIntegrityError, match=r"\(header or key slot\)"):
        mc.decrypt_to_memory(bad, wrong)


# --------------------------------------------------------------------------------------- keys


def test_key_text_formats(secret: mc.SecretKey) -> None:
    raw = secret.material
    forms = [
        mc.format_secret_key(secret),
        raw.hex(),
        raw.hex().upper() + "\n",
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "# comment\n\n  " + base64.b64encode(raw).decode() + "  \n",
    ]
    for text in forms:
        assert mc.parse_secret_key(text, source="test").material == raw


@pytest.mark.parametrize("text", ["", "abc", "00" * 31, "zz" * 32, base64.b64encode(b"x" * 31)])
def test_malformed_key_is_refused_without_echo(text) -> None:
    with pytest.raises(mc.ModelKeyError, match="does not hold a valid weights key") as info:
        mc.parse_secret_key(text, source="key file K")
    value = text.decode() if isinstance(text, bytes) else text
    assert not value or value not in str(info.value)


def test_repr_never_shows_the_key(secret: mc.SecretKey) -> None:
    for text in (repr(secret), str(secret), f"{secret}"):
        assert secret.key_id in text
        assert secret.material.hex() not in text
        assert base64.b64encode(secret.material).decode() not in text


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_key_file_accessible_by_others_is_refused(tmp_path: Path, secret, mode: int) -> None:
    path = _key_file(tmp_path / "k.key", mc.format_secret_key(secret), mode)
    with pytest.raises(mc.ModelKeyError) as info:
        mc.read_key_file(path)
    message = str(info.value)
    assert f"mode {mode:04o}" in message and f"chmod 600 {path}" in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_key_file_is_accepted(tmp_path: Path, secret, mode: int) -> None:
    path = _key_file(tmp_path / "k.key", mc.format_secret_key(secret), mode)
    assert mc.read_key_file(path).material == secret.material


def test_key_file_problems_are_key_errors(tmp_path: Path, rsa_key) -> None:
    with pytest.raises(mc.ModelKeyError, match="cannot read key file"):
        mc.read_key_file(tmp_path / "missing.key")
    with pytest.raises(mc.ModelKeyError, match="not a regular file"):
        mc.read_key_file(tmp_path)
    from cryptography.hazmat.primitives import serialization

    public = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = _key_file(tmp_path / "pub.pem", public.decode())
    with pytest.raises(mc.ModelKeyError, match="holds a public key"):
        mc.read_key_file(path)
    locked = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    path = _key_file(tmp_path / "locked.pem", locked.decode())
    with pytest.raises(mc.ModelKeyError, match="passphrase-protected"):
        mc.read_key_file(path)


# ------------------------------------------------------------------------------ open_weights


def _model_dir(tmp_path: Path, payload: bytes = PAYLOAD) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    _write(directory / mc.WEIGHTS_FILE, payload)
    return directory


def _encrypt_dir(directory: Path, recipients: list, *, keep_plain: bool = False) -> Path:
    plain = directory / mc.WEIGHTS_FILE
    mc.encrypt_file(plain, directory / mc.ENCRYPTED_WEIGHTS_FILE, recipients, chunk_size=CHUNK)
    if not keep_plain:
        plain.unlink()
    return directory


def test_open_weights_plain_and_pinned(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path)
    digest = mc.sha256_file(directory / mc.WEIGHTS_FILE)
    assert mc.open_weights(directory).getvalue() == PAYLOAD
    assert mc.open_weights(directory, expected_sha256=digest.upper()).getvalue() == PAYLOAD


def test_pin_mismatch_shows_both_hashes(tmp_path: Path, secret) -> None:
    directory = _model_dir(tmp_path)
    actual, wrong = mc.sha256_file(directory / mc.WEIGHTS_FILE), "ab" * 32
    with pytest.raises(mc.ModelIntegrityError) as info:
        mc.open_weights(directory, expected_sha256=wrong)
    assert f"expected {wrong}" in str(info.value) and f"actual {actual}" in str(info.value)
    key_file = _key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    _encrypt_dir(directory, [secret])
    with pytest.raises(mc.ModelIntegrityError) as info:
        mc.open_weights(directory, key_file=key_file, expected_sha256=wrong)
    assert f"expected {wrong}" in str(info.value) and f"actual {actual}" in str(info.value)


def test_malformed_pin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(mc.ModelProtectionError, match="64 hexadecimal digits"):
        mc.open_weights(_model_dir(tmp_path), expected_sha256="1234")


def test_open_weights_encrypted_with_key_file_and_env(tmp_path, secret, monkeypatch) -> None:
    directory = _encrypt_dir(_model_dir(tmp_path), [secret])
    key_file = _key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    pin = mc.normalize_sha256(_header(directory / mc.ENCRYPTED_WEIGHTS_FILE).sha256)
    assert mc.open_weights(directory, key_file=key_file, expected_sha256=pin).read() == PAYLOAD
    monkeypatch.setenv("M2FP_WEIGHTS_KEY", secret.material.hex())
    assert mc.open_weights(directory).read() == PAYLOAD
    monkeypatch.setenv("OTHER_KEY", base64.b64encode(secret.material).decode())
    assert mc.open_weights(directory, key_env="OTHER_KEY").read() == PAYLOAD


def test_key_file_wins_over_env(tmp_path, secret, monkeypatch) -> None:
    directory = _encrypt_dir(_model_dir(tmp_path), [secret])
    wrong = _key_file(tmp_path / "wrong.key", mc.format_secret_key(mc.generate_secret_key()))
    monkeypatch.setenv("M2FP_WEIGHTS_KEY", secret.material.hex())
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.open_weights(directory, key_file=wrong)


def test_open_weights_without_key(tmp_path, secret, monkeypatch) -> None:
    monkeypatch.delenv("M2FP_WEIGHTS_KEY", raising=False)
    directory = _encrypt_dir(_model_dir(tmp_path), [secret])
    with pytest.raises(mc.ModelKeyError, match="M2FP_WEIGHTS_KEY_FILE"):
        mc.open_weights(directory)


def test_open_weights_refuses_plaintext_when_a_key_is_configured(tmp_path, secret) -> None:
    directory = _model_dir(tmp_path)
    key_file = _key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    with pytest.raises(mc.ModelIntegrityError, match="holds only the unencrypted"):
        mc.open_weights(directory, key_file=key_file)


def test_open_weights_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(mc.ModelProtectionError, match="holds neither"):
        mc.open_weights(tmp_path)


def test_open_weights_prefers_encrypted_and_warns(tmp_path, secret, caplog) -> None:
    directory = _encrypt_dir(_model_dir(tmp_path), [secret], keep_plain=True)
    (directory / mc.WEIGHTS_FILE).write_bytes(b"not the model")
    key_file = _key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    with caplog.at_level(logging.WARNING, logger="security.model_crypto"):
        assert mc.open_weights(directory, key_file=key_file).read() == PAYLOAD
    assert "also holds the unencrypted" in caplog.text


def test_envelope_without_pin_warns(tmp_path, rsa_key, caplog) -> None:
    from cryptography.hazmat.primitives import serialization

    directory = _encrypt_dir(_model_dir(tmp_path), [rsa_key.public_key()])
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_file = _key_file(tmp_path / "kiosk.pem", pem.decode())
    with caplog.at_level(logging.WARNING, logger="security.model_crypto"):
        assert mc.open_weights(directory, key_file=key_file).read() == PAYLOAD
    assert "without a SHA-256 pin" in caplog.text


def test_key_material_never_in_messages_or_logs(tmp_path, secret, caplog) -> None:
    directory = _encrypt_dir(_model_dir(tmp_path), [secret])
    good = _key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    loose = _key_file(tmp_path / "loose.key", mc.format_secret_key(secret), 0o644)
    wrong_key = mc.generate_secret_key()
    wrong = _key_file(tmp_path / "wrong.key", mc.format_secret_key(wrong_key))
    enc = directory / mc.ENCRYPTED_WEIGHTS_FILE
    bad = directory / "bad"
    bad.mkdir()
    _flip(enc, 500, bad / mc.ENCRYPTED_WEIGHTS_FILE)
    messages = []
    with caplog.at_level(logging.DEBUG):
        mc.open_weights(directory, key_file=good)
        for kwargs, target in [
            ({"key_file": loose}, directory),
            ({"key_file": wrong}, directory),
            ({"key_file": good}, bad),
            ({"key_file": good, "expected_sha256": "00" * 32}, directory),
        ]:
            with pytest.raises(mc.ModelProtectionError) as info:
                mc.open_weights(target, **kwargs)
            messages.append(str(info.value))
    text = "\n".join(messages) + caplog.text
    for key in (secret, wrong_key):
        for form in (key.material.hex(), base64.b64encode(key.material).decode()):
            assert form.lower() not in text.lower()
    assert secret.key_id in caplog.text  # the id is logged, the key is not


def test_open_weights_writes_nothing_to_model_or_key_dir(tmp_path, secret) -> None:
    directory = _encrypt_dir(_model_dir(tmp_path), [secret])
    key_file = _key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    writes = inflags.CREATE | inflags.MODIFY | inflags.CLOSE_WRITE | inflags.MOVED_TO
    with INotify() as inotify:
        for path in (directory, tmp_path):
            inotify.add_watch(path, writes)
        bio = mc.open_weights(directory, key_file=key_file)
        events = inotify.read(timeout=0)
    assert bio.read() == PAYLOAD
    assert events == [], [(e.name, inflags.from_mask(e.mask)) for e in events]


# ----------------------------------------------------------------------------- check_weights


def _served_dir(tmp_path: Path, secret, *, encrypted: bool = True) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    directory = _model_dir(tmp_path)
    _write(directory / mc.CONFIG_FILE, b'{"framework": "pytorch"}')
    return _encrypt_dir(directory, [secret]) if encrypted else directory


def test_check_weights_reports_what_it_verified(tmp_path, secret) -> None:
    directory = _served_dir(tmp_path, secret)
    key_file = _key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    digest = _header(directory / mc.ENCRYPTED_WEIGHTS_FILE).sha256
    checked = mc.check_weights(directory, key_file=key_file, expected_sha256=digest)
    assert checked == mc.WeightsCheck(
        directory / mc.ENCRYPTED_WEIGHTS_FILE, len(PAYLOAD), digest, True, secret.key_id
    )
    assert checked.encrypted
    plain = _served_dir(tmp_path / "plain", secret, encrypted=False)
    checked = mc.check_weights(plain)
    assert checked == mc.WeightsCheck(plain / mc.WEIGHTS_FILE, len(PAYLOAD), digest, False, None)
    assert not checked.encrypted


def _bad_setups(tmp_path: Path, secret) -> dict[str, tuple[Path, dict]]:
    directory = _served_dir(tmp_path, secret)
    good = _key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    enc = directory / mc.ENCRYPTED_WEIGHTS_FILE
    flipped, truncated = (_served_dir(tmp_path / name, secret) for name in ("f", "t"))
    _flip(enc, enc.stat().st_size - 100, flipped / mc.ENCRYPTED_WEIGHTS_FILE)
    _write(truncated / mc.ENCRYPTED_WEIGHTS_FILE, enc.read_bytes()[:-1])
    plain = _served_dir(tmp_path / "plain", secret, encrypted=False)
    other = _key_file(tmp_path / "o.key", mc.format_secret_key(mc.generate_secret_key()))
    loose = _key_file(tmp_path / "loose.key", mc.format_secret_key(secret), 0o644)
    empty = _served_dir(tmp_path / "empty", secret, encrypted=False)
    (empty / mc.WEIGHTS_FILE).unlink()
    return {
        "pin": (directory, {"key_file": good, "expected_sha256": "00" * 32}),
        "pin-plain": (plain, {"expected_sha256": "00" * 32}),
        "flipped": (flipped, {"key_file": good}),
        "truncated": (truncated, {"key_file": good}),
        "wrong-key": (directory, {"key_file": other}),
        "loose-key": (directory, {"key_file": loose}),
        "no-key": (directory, {"key_env": "NO_SUCH_VARIABLE"}),
        "plaintext-with-key": (plain, {"key_file": good}),
        "no-weights": (empty, {}),
        "missing-dir": (tmp_path / "nowhere", {}),
        "bad-pin": (directory, {"key_file": good, "expected_sha256": "1234"}),
    }


def test_check_weights_refuses_what_open_weights_refuses(tmp_path, secret) -> None:
    """The same file selection, key rules and checks: the same error, word for word."""
    for name, (directory, kwargs) in _bad_setups(tmp_path, secret).items():
        with pytest.raises(mc.ModelProtectionError) as opened:
            mc.open_weights(directory, **kwargs)
        with pytest.raises(mc.ModelProtectionError) as checked:
            mc.check_weights(directory, **kwargs)
        assert type(checked.value) is type(opened.value), name
        assert str(checked.value) == str(opened.value), name


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "has no configuration.json"), (b"{trunc", "is not a JSON object"), (b"[]", "object")],
    ids=["missing", "malformed", "not-an-object"],
)
def test_check_weights_needs_a_configuration(tmp_path, secret, content, message) -> None:
    directory = _served_dir(tmp_path, secret, encrypted=False)
    config = directory / mc.CONFIG_FILE
    if content is None:
        config.unlink()
    else:
        config.write_bytes(content)
    with pytest.raises(mc.ModelProtectionError, match=message):
        mc.check_weights(directory)


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain"])
def test_check_weights_does_not_keep_the_plaintext(tmp_path, secret, encrypted) -> None:
    """Streaming: peak Python allocations near one chunk, not the file (open_weights holds
    the whole plaintext)."""
    import tracemalloc

    size, chunk = 8 * 1024 * 1024, 64 * 1024
    directory = tmp_path / "model"
    directory.mkdir()
    _write(directory / mc.CONFIG_FILE, b"{}")
    plain = _write(directory / mc.WEIGHTS_FILE, random.Random(1).randbytes(size))
    key_file = None
    if encrypted:
        mc.encrypt_file(plain, directory / mc.ENCRYPTED_WEIGHTS_FILE, [secret], chunk_size=chunk)
        plain.unlink()
        key_file = _key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    peaks = []
    for function in (mc.check_weights, mc.open_weights):
        tracemalloc.start()
        try:
            result = function(directory, key_file=key_file)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        del result
    assert peaks[0] < 3 * 1024 * 1024 < size <= peaks[1]


# Runs in a fresh interpreter: records every file this process opens for writing (and every
# rename, link, mkdir, temp file) through Python's audit hooks while open_weights runs, then
# writes one probe file to show that the hook does see writes.
_AUDIT_SCRIPT = """
import json, os, sys
from security.model_crypto import open_weights
from tests.support.paths import REPO
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
EVENTS = {"os.rename", "os.link", "os.symlink", "os.mkdir", "os.truncate", "shutil.copyfile",
          "tempfile.mkstemp", "tempfile.mkdtemp"}
seen, active = [], False
def hook(event, args):
    if not active:
        return
    if event == "open":
        path, mode, flags = args
        if (isinstance(mode, str) and set(mode) & set("wax+")) or (flags or 0) & WRITE_FLAGS:
            seen.append([event, str(path)])
    elif event in EVENTS:
        seen.append([event, str(args[0])])
sys.addaudithook(hook)
model_dir, key_file, probe = sys.argv[1:]
active = True
bio = open_weights(model_dir, key_file=key_file)
during, seen = seen, []
with open(probe, "wb") as fh:
    fh.write(b"probe")
active = False
print(json.dumps({"during": during, "probe": seen, "size": len(bio.getbuffer())}))
"""


def test_open_weights_opens_no_file_for_writing(tmp_path, secret) -> None:
    """Anywhere on disk, not just the watched directories (/tmp is shared with other tests,
    so a watch there could not tell our writes from theirs)."""
    import json
    import subprocess
    import sys

    directory = _encrypt_dir(_model_dir(tmp_path), [secret])
    key_file = _key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    probe = tmp_path / "probe"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _AUDIT_SCRIPT, str(directory), str(key_file), str(probe)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result = json.loads(out)
    assert result["size"] == len(PAYLOAD)
    assert result["during"] == []
    assert result["probe"] == [["open", str(probe)]]  # the hook does see writes


def test_failed_decryption_returns_nothing(tmp_path, secret) -> None:
    """A tamper in the last chunk is found after the earlier chunks were decrypted: the
    caller still gets an exception, never a partial buffer."""
    enc = _encrypt(tmp_path, [secret])
    bad = _flip(enc, enc.stat().st_size - 1, tmp_path / "bad.enc")
    result = None
    with pytest.raises(mc.ModelIntegrityError, match="chunk 5 of 5"):
        result = mc.decrypt_to_memory(bad, secret)
    assert result is None


# ------------------------------------------------------------------------- rewrap and output


def test_rewrap_reencrypts_for_a_new_key(tmp_path, secret) -> None:
    enc = _encrypt(tmp_path, [secret])
    new_key = mc.generate_secret_key()
    out = tmp_path / "new.enc"
    header = mc.rewrap_file(enc, out, secret, [new_key])
    assert header.key_ids == (new_key.key_id,)
    assert mc.decrypt_to_memory(out, new_key).getvalue() == PAYLOAD
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(out, secret)
    old_body = enc.read_bytes()[len(_header(enc).raw) :]
    new_body = out.read_bytes()[len(header.raw) :]
    assert len(old_body) == len(new_body) and old_body[:CHUNK] != new_body[:CHUNK]


def test_rewrap_keep_data_key_copies_the_body(tmp_path, secret, rsa_key) -> None:
    enc = _encrypt(tmp_path, [secret])
    out = tmp_path / "kiosk.enc"
    header = mc.rewrap_file(enc, out, secret, [rsa_key.public_key()], reencrypt=False)
    assert out.read_bytes()[len(header.raw) :] == enc.read_bytes()[len(_header(enc).raw) :]
    assert mc.decrypt_to_memory(out, rsa_key).getvalue() == PAYLOAD
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.decrypt_to_memory(out, secret)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("reencrypt", [True, False])
def test_failed_rewrap_leaves_no_output(tmp_path, secret, reencrypt: bool) -> None:
    enc = _encrypt(tmp_path, [secret])
    bad = _flip(enc, enc.stat().st_size - 1, tmp_path / "bad.enc")
    out = tmp_path / "out.enc"
    with pytest.raises(mc.ModelIntegrityError, match="chunk 5 of 5"):
        mc.rewrap_file(bad, out, secret, [mc.generate_secret_key()], reencrypt=reencrypt)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_encrypt_output_rules(tmp_path, secret) -> None:
    enc = _encrypt(tmp_path, [secret])
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
    assert _leftovers(tmp_path) == []


def test_atomic_output_removes_the_temporary_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), mc.atomic_output(target) as out:
        out.write(b"partial")
        raise RuntimeError("boom")
    assert not target.exists() and _leftovers(tmp_path) == []
    with mc.atomic_output(target, mode=0o640) as out:
        out.write(b"done")
    assert target.read_bytes() == b"done" and oct(target.stat().st_mode & 0o777) == "0o640"


def test_encrypt_rejects_bad_chunk_size(tmp_path, secret) -> None:
    src = _write(tmp_path / "w.bin", PAYLOAD)
    for size in (mc.MIN_CHUNK_SIZE - 1, mc.MAX_CHUNK_SIZE + 1):
        with pytest.raises(mc.ModelProtectionError, match="chunk size"):
            mc.encrypt_file(src, tmp_path / "w.enc", [secret], chunk_size=size)
    assert not (tmp_path / "w.enc").exists()


def test_round_trip_real_checkpoint(tmp_path, secret, rsa_key, tiny_model_dir) -> None:
    """encrypt → open_weights → load_model(weights=bio) gives the very same tensors."""
    import torch

    from m2fp.build import CONFIG_FILE, load_model

    reference = load_model(tiny_model_dir).state_dict()
    directory = tmp_path / "model"
    directory.mkdir()
    _write(directory / CONFIG_FILE, (tiny_model_dir / CONFIG_FILE).read_bytes())
    plain = tiny_model_dir / mc.WEIGHTS_FILE
    pin = mc.sha256_file(plain)
    key_file = _key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    mc.encrypt_file(plain, directory / mc.ENCRYPTED_WEIGHTS_FILE, [secret, rsa_key.public_key()])
    assert not (directory / mc.WEIGHTS_FILE).exists()
    from cryptography.hazmat.primitives import serialization

    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    kiosk_key = _key_file(tmp_path / "kiosk.pem", pem.decode())
    for key in (key_file, kiosk_key):
        bio = mc.open_weights(directory, key_file=key, expected_sha256=pin)
        model = load_model(directory, weights=bio)
        state = model.state_dict()
        assert state.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(state[name], tensor), name


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3 * 1024 * 1024 + 5)
    seen = []
    path = _write(tmp_path / "f", data)
    assert mc.sha256_file(path, progress=seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)
