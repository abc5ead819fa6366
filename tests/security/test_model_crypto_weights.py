"""security/model_crypto/weights.py: `open_weights` and `check_weights` on model directories:
which file, which key, the pin, and nothing written anywhere."""

from __future__ import annotations

import base64
import logging
import os
import random
from pathlib import Path

import pytest
from inotify_simple import INotify
from inotify_simple import flags as inflags

from security import model_crypto as mc
from settings import Settings
from tests.support import crypto_files as cf
from tests.support.crypto_files import PAYLOAD
from tests.support.paths import REPO


def test_open_weights_plain_and_pinned(tmp_path: Path) -> None:
    directory = cf.model_dir(tmp_path)
    digest = mc.sha256_file(directory / mc.WEIGHTS_FILE)
    assert mc.open_weights(directory).getvalue() == PAYLOAD
    assert mc.open_weights(directory, expected_sha256=digest.upper()).getvalue() == PAYLOAD


def test_pin_mismatch_shows_both_hashes(tmp_path: Path, secret) -> None:
    directory = cf.model_dir(tmp_path)
    actual, wrong = mc.sha256_file(directory / mc.WEIGHTS_FILE), "ab" * 32
    with pytest.raises(mc.ModelIntegrityError) as info:
        mc.open_weights(directory, expected_sha256=wrong)
    assert f"expected {wrong}" in str(info.value) and f"actual {actual}" in str(info.value)
    key_file = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    cf.encrypt_dir(directory, [secret])
    with pytest.raises(mc.ModelIntegrityError) as info:
        mc.open_weights(directory, key_file=key_file, expected_sha256=wrong)
    assert f"expected {wrong}" in str(info.value) and f"actual {actual}" in str(info.value)


def test_malformed_pin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(mc.ModelProtectionError, match="64 hexadecimal digits"):
        mc.open_weights(cf.model_dir(tmp_path), expected_sha256="1234")


def test_open_weights_encrypted_with_key_file_and_key_text(tmp_path, secret) -> None:
    directory = cf.encrypt_dir(cf.model_dir(tmp_path), [secret])
    key_file = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    pin = mc.normalize_sha256(cf.header(directory / mc.ENCRYPTED_WEIGHTS_FILE).sha256)
    assert mc.open_weights(directory, key_file=key_file, expected_sha256=pin).read() == PAYLOAD
    settings = Settings.from_env({"M2FP_WEIGHTS_KEY": secret.material.hex()})
    assert mc.open_weights(directory, key_text=settings.weights_key).read() == PAYLOAD
    text = base64.b64encode(secret.material).decode()
    assert mc.open_weights(directory, key_text=text).read() == PAYLOAD


def test_the_key_setting_never_shows_in_repr(secret) -> None:
    settings = Settings.from_env({"M2FP_WEIGHTS_KEY": secret.material.hex()})
    assert settings.weights_key == secret.material.hex()
    assert secret.material.hex() not in repr(settings)


def test_key_file_wins_over_key_text(tmp_path, secret) -> None:
    directory = cf.encrypt_dir(cf.model_dir(tmp_path), [secret])
    wrong = cf.key_file(tmp_path / "wrong.key", mc.format_secret_key(mc.generate_secret_key()))
    with pytest.raises(mc.ModelIntegrityError, match=mc.INTEGRITY_MESSAGE):
        mc.open_weights(directory, key_file=wrong, key_text=secret.material.hex())


def test_open_weights_without_key(tmp_path, secret, monkeypatch) -> None:
    """The key comes from the arguments (the service's Settings), never from the environment
    of the process."""
    monkeypatch.setenv("M2FP_WEIGHTS_KEY", secret.material.hex())
    directory = cf.encrypt_dir(cf.model_dir(tmp_path), [secret])
    with pytest.raises(mc.ModelKeyError, match="M2FP_WEIGHTS_KEY_FILE"):
        mc.open_weights(directory)


def test_malformed_key_text_names_the_variable(tmp_path, secret) -> None:
    directory = cf.encrypt_dir(cf.model_dir(tmp_path), [secret])
    with pytest.raises(mc.ModelKeyError, match="environment variable M2FP_WEIGHTS_KEY") as info:
        mc.open_weights(directory, key_text="not-a-key")
    assert "not-a-key" not in str(info.value)


def test_open_weights_refuses_plaintext_when_a_key_is_configured(tmp_path, secret) -> None:
    directory = cf.model_dir(tmp_path)
    key_file = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    with pytest.raises(mc.ModelIntegrityError, match="holds only the unencrypted"):
        mc.open_weights(directory, key_file=key_file)
    with pytest.raises(mc.ModelIntegrityError, match="holds only the unencrypted"):
        mc.open_weights(directory, key_text=secret.material.hex())


def test_open_weights_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(mc.ModelProtectionError, match="holds neither"):
        mc.open_weights(tmp_path)


def test_open_weights_prefers_encrypted_and_warns(tmp_path, secret, caplog) -> None:
    directory = cf.encrypt_dir(cf.model_dir(tmp_path), [secret], keep_plain=True)
    (directory / mc.WEIGHTS_FILE).write_bytes(b"not the model")
    key_file = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    with caplog.at_level(logging.WARNING, logger="security.model_crypto"):
        assert mc.open_weights(directory, key_file=key_file).read() == PAYLOAD
    assert "also holds the unencrypted" in caplog.text


def test_envelope_without_pin_warns(tmp_path, rsa_key, caplog) -> None:
    directory = cf.encrypt_dir(cf.model_dir(tmp_path), [rsa_key.public_key()])
    key_file = cf.key_file(tmp_path / "kiosk.pem", mc.private_key_pem(rsa_key).decode())
    with caplog.at_level(logging.WARNING, logger="security.model_crypto"):
        assert mc.open_weights(directory, key_file=key_file).read() == PAYLOAD
    assert "without a SHA-256 pin" in caplog.text


def test_key_material_never_in_messages_or_logs(tmp_path, secret, caplog) -> None:
    directory = cf.encrypt_dir(cf.model_dir(tmp_path), [secret])
    good = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    loose = cf.key_file(tmp_path / "loose.key", mc.format_secret_key(secret), 0o644)
    wrong_key = mc.generate_secret_key()
    wrong = cf.key_file(tmp_path / "wrong.key", mc.format_secret_key(wrong_key))
    enc = directory / mc.ENCRYPTED_WEIGHTS_FILE
    bad = directory / "bad"
    bad.mkdir()
    cf.flip(enc, 500, bad / mc.ENCRYPTED_WEIGHTS_FILE)
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
    directory = cf.encrypt_dir(cf.model_dir(tmp_path), [secret])
    key_file = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    writes = inflags.CREATE | inflags.MODIFY | inflags.CLOSE_WRITE | inflags.MOVED_TO
    with INotify() as inotify:
        for path in (directory, tmp_path):
            inotify.add_watch(path, writes)
        bio = mc.open_weights(directory, key_file=key_file)
        events = inotify.read(timeout=0)
    assert bio.read() == PAYLOAD
    assert events == [], [(e.name, inflags.from_mask(e.mask)) for e in events]


def _served_dir(tmp_path: Path, secret, *, encrypted: bool = True) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    directory = cf.model_dir(tmp_path)
    cf.write(directory / mc.CONFIG_FILE, b'{"framework": "pytorch"}')
    return cf.encrypt_dir(directory, [secret]) if encrypted else directory


def test_check_weights_reports_what_it_verified(tmp_path, secret) -> None:
    directory = _served_dir(tmp_path, secret)
    key_file = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    digest = cf.header(directory / mc.ENCRYPTED_WEIGHTS_FILE).sha256
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
    good = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    enc = directory / mc.ENCRYPTED_WEIGHTS_FILE
    flipped, truncated = (_served_dir(tmp_path / name, secret) for name in ("f", "t"))
    cf.flip(enc, enc.stat().st_size - 100, flipped / mc.ENCRYPTED_WEIGHTS_FILE)
    cf.write(truncated / mc.ENCRYPTED_WEIGHTS_FILE, enc.read_bytes()[:-1])
    plain = _served_dir(tmp_path / "plain", secret, encrypted=False)
    other = cf.key_file(tmp_path / "o.key", mc.format_secret_key(mc.generate_secret_key()))
    loose = cf.key_file(tmp_path / "loose.key", mc.format_secret_key(secret), 0o644)
    empty = _served_dir(tmp_path / "empty", secret, encrypted=False)
    (empty / mc.WEIGHTS_FILE).unlink()
    return {
        "pin": (directory, {"key_file": good, "expected_sha256": "00" * 32}),
        "pin-plain": (plain, {"expected_sha256": "00" * 32}),
        "flipped": (flipped, {"key_file": good}),
        "truncated": (truncated, {"key_file": good}),
        "wrong-key": (directory, {"key_file": other}),
        "loose-key": (directory, {"key_file": loose}),
        "no-key": (directory, {}),
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
    cf.write(directory / mc.CONFIG_FILE, b"{}")
    plain = cf.write(directory / mc.WEIGHTS_FILE, random.Random(1).randbytes(size))
    key_file = None
    if encrypted:
        mc.encrypt_file(plain, directory / mc.ENCRYPTED_WEIGHTS_FILE, [secret], chunk_size=chunk)
        plain.unlink()
        key_file = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret))
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

    directory = cf.encrypt_dir(cf.model_dir(tmp_path), [secret])
    key_file = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret))
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


def test_round_trip_real_checkpoint(tmp_path, secret, rsa_key, tiny_model_dir) -> None:
    """encrypt → open_weights → load_model(weights=bio) gives the very same tensors."""
    import torch

    from m2fp.build import CONFIG_FILE, load_model

    reference = load_model(tiny_model_dir).state_dict()
    directory = tmp_path / "model"
    directory.mkdir()
    cf.write(directory / CONFIG_FILE, (tiny_model_dir / CONFIG_FILE).read_bytes())
    plain = tiny_model_dir / mc.WEIGHTS_FILE
    pin = mc.sha256_file(plain)
    key_file = cf.key_file(tmp_path / "k.key", mc.format_secret_key(secret))
    mc.encrypt_file(plain, directory / mc.ENCRYPTED_WEIGHTS_FILE, [secret, rsa_key.public_key()])
    assert not (directory / mc.WEIGHTS_FILE).exists()
    pem = mc.private_key_pem(rsa_key)
    kiosk_key = cf.key_file(tmp_path / "kiosk.pem", pem.decode())
    for key in (key_file, kiosk_key):
        bio = mc.open_weights(directory, key_file=key, expected_sha256=pin)
        model = load_model(directory, weights=bio)
        state = model.state_dict()
        assert state.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.equal(state[name], tensor), name
