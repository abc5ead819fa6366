"""security/model_crypto/keys.py: key texts, key files and their permissions, key ids."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from security import model_crypto as mc
from tests.support import crypto_files as cf


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
    path = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret), mode)
    with pytest.raises(mc.ModelKeyError) as info:
        mc.read_key_file(path)
    message = str(info.value)
    assert f"mode {mode:04o}" in message and f"chmod 600 {path}" in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_key_file_is_accepted(tmp_path: Path, secret, mode: int) -> None:
    path = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret), mode)
    assert mc.read_key_file(path).material == secret.material


def test_key_file_problems_are_key_errors(tmp_path: Path, rsa_key) -> None:
    with pytest.raises(mc.ModelKeyError, match="cannot read key file"):
        mc.read_key_file(tmp_path / "missing.key")
    with pytest.raises(mc.ModelKeyError, match="not a regular file"):
        mc.read_key_file(tmp_path)
    from cryptography.hazmat.primitives import serialization

    path = cf.key_file(tmp_path / "pub.pem", mc.public_key_pem(rsa_key).decode())
    with pytest.raises(mc.ModelKeyError, match="holds a public key"):
        mc.read_key_file(path)
    locked = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    path = cf.key_file(tmp_path / "locked.pem", locked.decode())
    with pytest.raises(mc.ModelKeyError, match="passphrase-protected"):
        mc.read_key_file(path)


def test_pem_files_round_trip(tmp_path: Path, rsa_key) -> None:
    private = cf.key_file(tmp_path / "kiosk.pem", mc.private_key_pem(rsa_key).decode())
    public = cf.key_file(tmp_path / "kiosk.pub.pem", mc.public_key_pem(rsa_key).decode())
    assert mc.key_id(mc.read_key_file(private)) == mc.key_id(rsa_key)
    assert mc.key_id(mc.read_public_key(public)) == mc.key_id(rsa_key)
    with pytest.raises(mc.ModelKeyError, match="is a private key"):
        mc.read_public_key(private)


def test_resolve_key_prefers_the_file_and_names_the_text_source(tmp_path: Path, secret) -> None:
    path = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    assert mc.resolve_key(path, "not-a-key").material == secret.material  # text never parsed
    assert mc.resolve_key(None, secret.material.hex()).material == secret.material
    assert mc.resolve_key(None, "  ") is None and mc.resolve_key("", None) is None
    with pytest.raises(mc.ModelKeyError, match="^environment variable M2FP_WEIGHTS_KEY does"):
        mc.resolve_key(None, "not-a-key")
    with pytest.raises(mc.ModelKeyError, match="^environment variable OTHER does"):
        mc.key_from_text("not-a-key", source="environment variable OTHER")
