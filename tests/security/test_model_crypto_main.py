"""security/model_crypto/__main__.py, `python -m security.model_crypto`, in subprocesses:
keygen, encrypt, decrypt-check, rewrap, hash, info; exit codes, one-line errors, atomic
outputs."""

from __future__ import annotations

import base64
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from security import model_crypto as mc
from security.model_crypto.container import TAG_BYTES
from tests.support.paths import REPO

PAYLOAD = random.Random(1).randbytes(10_000)


def run(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("M2FP_")}
    return subprocess.run(
        [sys.executable, "-m", "security.model_crypto", *map(str, args)],
        cwd=REPO,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_fails(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A secret key file, a second one, and an RSA key pair, made by `keygen`."""
    d = tmp_path_factory.mktemp("keys")
    for name in ("main.key", "other.key"):
        result = run("keygen", "--out", d / name)
        assert result.returncode == 0, result.stderr
    result = run("keygen", "--rsa", "--bits", "2048", "--out", d / "kiosk.pem")
    assert result.returncode == 0, result.stderr
    return {
        "main": d / "main.key",
        "other": d / "other.key",
        "private": d / "kiosk.pem",
        "public": d / "kiosk.pub.pem",
    }


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / mc.WEIGHTS_FILE).write_bytes(PAYLOAD)
    return directory


def _encrypt(model_dir: Path, keys: dict[str, Path]) -> Path:
    result = run("encrypt", model_dir, "--key-file", keys["main"], "--chunk-size", 2048)
    assert result.returncode == 0, result.stderr
    return model_dir / mc.ENCRYPTED_WEIGHTS_FILE


def _key_texts(path: Path) -> list[str]:
    key = mc.read_key_file(path)
    return [key.material.hex(), path.read_text().splitlines()[-1]]


def test_keygen_files_and_modes(keys: dict[str, Path]) -> None:
    assert keys["main"].stat().st_mode & 0o777 == 0o600
    assert keys["private"].stat().st_mode & 0o777 == 0o600
    assert keys["public"].stat().st_mode & 0o777 == 0o644
    key = mc.read_key_file(keys["main"])
    assert key.key_id in keys["main"].read_text()
    assert isinstance(mc.read_key_file(keys["private"]), rsa.RSAPrivateKey)
    mc.read_public_key(keys["public"])


def test_keygen_never_replaces_a_key_without_force(keys: dict[str, Path]) -> None:
    before = keys["main"].read_bytes()
    assert_fails(run("keygen", "--out", keys["main"]), 4, "already exists", "--force")
    assert keys["main"].read_bytes() == before


def test_encrypt_check_hash_info(model_dir: Path, keys: dict[str, Path]) -> None:
    result = run("encrypt", model_dir, "--key-file", keys["main"], "--chunk-size", 2048)
    assert result.returncode == 0, result.stderr
    digest = mc.sha256_file(model_dir / mc.WEIGHTS_FILE)
    assert f"M2FP_WEIGHTS_SHA256={digest}" in result.stdout
    enc = model_dir / mc.ENCRYPTED_WEIGHTS_FILE
    assert PAYLOAD[:64] not in enc.read_bytes()
    (model_dir / mc.WEIGHTS_FILE).unlink()

    result = run("decrypt-check", model_dir, "--key-file", keys["main"], "--sha256", digest)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK {enc}") and "matches the pin" in result.stdout

    env = {"M2FP_WEIGHTS_KEY_FILE": str(keys["main"]), "M2FP_WEIGHTS_SHA256": digest}
    assert run("decrypt-check", enc, env=env).returncode == 0

    result = run("hash", model_dir, "--key-file", keys["main"])
    assert result.returncode == 0 and result.stdout.split() == [digest, str(enc)]
    assert "verified" in result.stderr
    result = run("hash", enc)
    assert result.returncode == 0 and result.stdout.split()[0] == digest
    assert "NOT verified" in result.stderr

    result = run("info", enc)
    key_id = mc.read_key_file(keys["main"]).key_id
    assert result.returncode == 0 and key_id in result.stdout and "5 of 2048" in result.stdout
    assert mc.open_weights(model_dir, key_file=keys["main"]).read() == PAYLOAD


def test_hash_plain_file_is_sha256sum(model_dir: Path) -> None:
    result = run("hash", model_dir / mc.WEIGHTS_FILE)
    assert result.returncode == 0
    assert result.stdout.split()[0] == mc.sha256_file(model_dir / mc.WEIGHTS_FILE)


@pytest.mark.parametrize("where", ["magic", "key_slot", "header_tag", "body", "last_tag"])
def test_tampered_file_exits_1(model_dir: Path, keys, tmp_path: Path, where: str) -> None:
    enc = _encrypt(model_dir, keys)
    data = bytearray(enc.read_bytes())
    with enc.open("rb") as fh:
        header_length = len(mc.read_header(fh).raw)
    position = {
        "magic": 3,
        "key_slot": 100,
        "header_tag": header_length - 1,
        "body": header_length + 3000,
        "last_tag": len(data) - 1,
    }[where]
    data[position] ^= 0x10
    bad = tmp_path / "bad.enc"
    bad.write_bytes(bytes(data))
    result = run("decrypt-check", bad, "--key-file", keys["main"])
    assert_fails(result, 1, mc.INTEGRITY_MESSAGE)
    for text in _key_texts(keys["main"]):
        assert text not in result.stderr + result.stdout


@pytest.mark.parametrize("change", ["truncate", "append", "swap_chunks"])
def test_truncated_appended_swapped_exit_1(model_dir: Path, keys, tmp_path, change) -> None:
    enc = _encrypt(model_dir, keys)
    data = enc.read_bytes()
    with enc.open("rb") as fh:
        h = len(mc.read_header(fh).raw)
    step = 2048 + TAG_BYTES
    bad_data = {
        "truncate": data[: h + step],
        "append": data + data[h : h + step],
        "swap_chunks": data[:h] + data[h + step : h + 2 * step] + data[h : h + step]
        + data[h + 2 * step :],
    }[change]  # fmt: skip
    bad = tmp_path / "bad.enc"
    bad.write_bytes(bad_data)
    assert_fails(run("decrypt-check", bad, "--key-file", keys["main"]), 1, mc.INTEGRITY_MESSAGE)


def test_wrong_key_exits_1(model_dir: Path, keys) -> None:
    enc = _encrypt(model_dir, keys)
    result = run("decrypt-check", enc, "--key-file", keys["other"])
    other_id = mc.read_key_file(keys["other"]).key_id
    assert_fails(result, 1, mc.INTEGRITY_MESSAGE, other_id)
    for text in _key_texts(keys["other"]) + _key_texts(keys["main"]):
        assert text not in result.stderr


def test_pin_mismatch_exits_1_with_both_hashes(model_dir: Path, keys) -> None:
    enc = _encrypt(model_dir, keys)
    actual = mc.sha256_file(model_dir / mc.WEIGHTS_FILE)
    wrong = "0" * 64
    env = {"M2FP_WEIGHTS_SHA256": wrong}
    result = run("decrypt-check", enc, "--key-file", keys["main"], env=env)
    assert_fails(result, 1, f"expected {wrong}", f"actual {actual}")


def test_key_from_environment_variable(model_dir: Path, keys) -> None:
    enc = _encrypt(model_dir, keys)
    env = {"M2FP_WEIGHTS_KEY": mc.read_key_file(keys["main"]).material.hex()}
    result = run("decrypt-check", enc, env=env)
    assert result.returncode == 0, result.stderr
    assert_fails(run("decrypt-check", enc), 3, "no key", "M2FP_WEIGHTS_KEY_FILE")
    result = run("decrypt-check", enc, env={"M2FP_WEIGHTS_KEY": "not-a-key"})
    assert_fails(result, 3, "environment variable M2FP_WEIGHTS_KEY")
    assert "not-a-key" not in result.stderr
    other = {"OTHER_KEY": base64.b64encode(mc.read_key_file(keys["main"]).material).decode()}
    result = run("decrypt-check", enc, "--key-env", "OTHER_KEY", env=other)
    assert result.returncode == 0, result.stderr
    result = run("hash", enc, "--key-env", "OTHER_KEY", env=other)
    assert result.returncode == 0 and "verified" in result.stderr
    assert "NOT verified" not in result.stderr


def test_loose_key_file_exits_3_naming_chmod(model_dir: Path, keys, tmp_path: Path) -> None:
    enc = _encrypt(model_dir, keys)
    loose = tmp_path / "loose.key"
    shutil.copy(keys["main"], loose)
    loose.chmod(0o644)
    result = run("decrypt-check", enc, "--key-file", loose)
    assert_fails(result, 3, "mode 0644", f"chmod 600 {loose}")


def test_encrypt_output_rules(model_dir: Path, keys: dict[str, Path]) -> None:
    enc = _encrypt(model_dir, keys)
    before = enc.read_bytes()
    result = run("encrypt", model_dir, "--key-file", keys["main"])
    assert_fails(result, 4, "already exists", "--force")
    assert enc.read_bytes() == before
    result = run("encrypt", model_dir, "--key-file", keys["main"], "--force")
    assert result.returncode == 0 and enc.read_bytes() != before
    plain = model_dir / mc.WEIGHTS_FILE
    result = run("encrypt", plain, "-o", plain, "--key-file", keys["main"], "--force")
    assert_fails(result, 4, "refusing to overwrite the input")
    assert plain.read_bytes() == PAYLOAD
    assert_fails(run("encrypt", enc, "--key-file", keys["main"]), 4, "already encrypted")
    assert_fails(run("encrypt", model_dir), 3, "--recipient")
    assert sorted(p.name for p in model_dir.iterdir()) == [mc.WEIGHTS_FILE, enc.name]


def test_envelope_round_trip_and_wrong_private_key(model_dir: Path, keys, tmp_path) -> None:
    result = run("encrypt", model_dir, "--recipient", keys["public"])
    assert result.returncode == 0, result.stderr
    enc = model_dir / mc.ENCRYPTED_WEIGHTS_FILE
    result = run("decrypt-check", enc, "--key-file", keys["private"])
    assert result.returncode == 0, result.stderr
    assert_fails(run("decrypt-check", enc, "--key-file", keys["main"]), 1, mc.INTEGRITY_MESSAGE)
    other = tmp_path / "other.pem"
    assert run("keygen", "--rsa", "--bits", "2048", "-o", other).returncode == 0
    assert_fails(run("decrypt-check", enc, "--key-file", other), 1, mc.INTEGRITY_MESSAGE)


@pytest.mark.parametrize("keep", [False, True], ids=["reencrypt", "keep_data_key"])
def test_rewrap_to_new_key_and_recipient(model_dir: Path, keys, tmp_path, keep: bool) -> None:
    enc = _encrypt(model_dir, keys)
    out = tmp_path / "rotated.enc"
    args = ["rewrap", enc, "-o", out, "--key-file", keys["main"], "--to-key-file", keys["other"]]
    args += ["--to-recipient", keys["public"]] + (["--keep-data-key"] * keep)
    result = run(*args)
    assert result.returncode == 0, result.stderr
    for key in ("other", "private"):
        assert run("decrypt-check", out, "--key-file", keys[key]).returncode == 0
    assert_fails(run("decrypt-check", out, "--key-file", keys["main"]), 1, mc.INTEGRITY_MESSAGE)
    assert_fails(run(*args), 4, "already exists")


def test_failed_rewrap_leaves_no_partial_output(model_dir: Path, keys, tmp_path) -> None:
    enc = _encrypt(model_dir, keys)
    data = bytearray(enc.read_bytes())
    data[-5] ^= 1  # the last chunk: found only after the others were written out
    bad = tmp_path / "bad.enc"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out.enc"
    result = run(
        "rewrap", bad, "-o", out, "--key-file", keys["main"], "--to-key-file", keys["other"]
    )
    assert_fails(result, 1, mc.INTEGRITY_MESSAGE, "chunk 5 of 5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.enc", "model"]


def test_usage_errors_exit_2() -> None:
    assert run().returncode == 2
    assert run("encrypt").returncode == 2
    assert run("frobnicate").returncode == 2


def test_missing_input_exits_4(tmp_path: Path, keys) -> None:
    assert_fails(run("encrypt", tmp_path / "nope", "--key-file", keys["main"]), 4, "nope")
    result = run("decrypt-check", tmp_path / "nope.enc", "--key-file", keys["main"])
    assert_fails(result, 4, "nope.enc")
