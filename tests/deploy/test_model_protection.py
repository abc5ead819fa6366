"""The model file's protection through real gunicorn.

- The master checks the model before any worker starts (gunicorn.conf.py `on_starting`): a
  pin mismatch, a modified or truncated encrypted file, a wrong, missing or loose key, a
  missing directory each stop gunicorn at once, exit status 1, with one `Error:` line that says
  what failed (both hashes for a pin mismatch) and never the key.
- Started on an encrypted model directory, the service serves parses while inotify sees
  nothing of it written: the server runs in a bubblewrap namespace whose root is read-only and
  whose only writable places are its private /tmp, /var/tmp and /dev/shm, watched from before
  the start through the model load, the parses and the shutdown. Afterwards no file there, nor
  in the model and key directories, holds any piece of the plaintext checkpoint.
"""

from __future__ import annotations

import base64
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from security import model_crypto as mc
from security.model_crypto.container import TAG_BYTES
from tests.support import images
from tests.support.fswatch import TreeWatch
from tests.support.model_factory import write_tiny_model_dir
from tests.support.servers import Gunicorn, run_gunicorn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHUNK = 64 * 1024  # a tiny checkpoint in several chunks
REFUSED = "Error: the model cannot be served, not starting: "
WRONG_PIN = "ab" * 32


@dataclass(frozen=True)
class EncryptedModel:
    directory: Path  # configuration.json + pytorch_model.pt.enc, the plaintext removed
    key_file: Path  # mode 0600, in a directory of its own
    key: mc.SecretKey
    sha256: str
    plaintext: bytes  # the checkpoint, kept in this process's memory to search the disk for


@pytest.fixture(scope="module")
def encrypted_model(tmp_path_factory: pytest.TempPathFactory) -> EncryptedModel:
    root = tmp_path_factory.mktemp("encrypted")
    directory = write_tiny_model_dir(root / "model", seed=1)
    plain = directory / mc.WEIGHTS_FILE
    plaintext = plain.read_bytes()
    key = mc.generate_secret_key()
    key_file = _key_file(root / "key", key)
    header = mc.encrypt_file(plain, directory / mc.ENCRYPTED_WEIGHTS_FILE, [key], chunk_size=CHUNK)
    assert header.chunks > 4
    plain.unlink()
    return EncryptedModel(directory, key_file, key, header.sha256, plaintext)


def _key_file(directory: Path, key: mc.SecretKey, mode: int = 0o600) -> Path:
    directory.mkdir(mode=0o700)
    path = directory / "weights.key"
    path.write_text(mc.format_secret_key(key))
    path.chmod(mode)
    return path


def _copy(model: EncryptedModel, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model.directory, tmp_path / "model"))


def _key_forms(key: mc.SecretKey) -> list[str]:
    """The key as text in every form a key file or variable may hold it."""
    return [
        key.material.hex(),
        base64.b64encode(key.material).decode(),
        base64.urlsafe_b64encode(key.material).decode().rstrip("="),
    ]


# -- the master refuses to start ---------------------------------------------------------------

# Each case changes one thing in a copy of the encrypted directory or in the environment; the
# refusal must contain its fragments ({actual}: the plaintext's SHA-256, {key_id}: the key's id,
# {chunk}: the chunk holding the flipped byte, of {chunks}; {missing}: the directory).
CASES = {
    "pin-mismatch-plain": ["SHA-256 mismatch", f"expected {WRONG_PIN}", "actual {actual}"],
    "pin-mismatch-encrypted": ["SHA-256 mismatch", f"expected {WRONG_PIN}", "actual {actual}"],
    "one-byte-flipped": [mc.INTEGRITY_MESSAGE, "(chunk {chunk} of {chunks})"],
    "truncated": [mc.INTEGRITY_MESSAGE, "(truncated: 1000 bytes missing)"],
    "wrong-key": [mc.INTEGRITY_MESSAGE, "the file is encrypted for key id {key_id}"],
    # M2FP_WEIGHTS_KEY reaches the check through Settings (no key file set).
    "wrong-key-variable": [mc.INTEGRITY_MESSAGE, "the file is encrypted for key id {key_id}"],
    "key-file-mode-0644": ["is accessible by group or others (mode 0644)", "chmod 600"],
    "no-key": ["is encrypted and no key is configured", "M2FP_WEIGHTS_KEY_FILE"],
    "plaintext-swapped-in": ["holds only the unencrypted pytorch_model.pt"],
    "missing-model-dir": ["model directory {missing} does not exist"],
}


def _prepare(case: str, model: EncryptedModel, tmp_path: Path) -> tuple[dict[str, str], dict]:
    """The environment of one case (all right but for the case's change), and the values
    its message fragments name."""
    directory = _copy(model, tmp_path)
    encrypted = directory / mc.ENCRYPTED_WEIGHTS_FILE
    with encrypted.open("rb") as fh:
        header = mc.read_header(fh, encrypted)
    position = len(header.raw) + 6 * (CHUNK + TAG_BYTES) + 1000  # in the 7th chunk
    missing = tmp_path / "nowhere"
    values = {"actual": model.sha256, "key_id": model.key.key_id, "missing": missing}
    values |= {"chunk": 7, "chunks": header.chunks}
    env = {
        "M2FP_MODEL_DIR": str(directory),
        "M2FP_WEIGHTS_KEY_FILE": str(model.key_file),
        "M2FP_WEIGHTS_SHA256": model.sha256,
    }
    if case.startswith("pin-mismatch"):
        env["M2FP_WEIGHTS_SHA256"] = WRONG_PIN
    if case in ("pin-mismatch-plain", "plaintext-swapped-in"):
        (directory / mc.WEIGHTS_FILE).write_bytes(model.plaintext)
        encrypted.unlink()
    if case in ("pin-mismatch-plain", "no-key"):
        del env["M2FP_WEIGHTS_KEY_FILE"]
    elif case == "one-byte-flipped":
        data = bytearray(encrypted.read_bytes())
        data[position] ^= 0x01
        encrypted.write_bytes(data)
    elif case == "truncated":
        encrypted.write_bytes(encrypted.read_bytes()[:-1000])
    elif case == "wrong-key":
        env["M2FP_WEIGHTS_KEY_FILE"] = str(_key_file(tmp_path / "other", mc.generate_secret_key()))
    elif case == "wrong-key-variable":
        del env["M2FP_WEIGHTS_KEY_FILE"]
        env["M2FP_WEIGHTS_KEY"] = mc.generate_secret_key().material.hex()
    elif case == "key-file-mode-0644":
        env["M2FP_WEIGHTS_KEY_FILE"] = str(_key_file(tmp_path / "loose", model.key, 0o644))
    elif case == "missing-model-dir":
        env["M2FP_MODEL_DIR"] = str(missing)
    return env, values


@pytest.mark.parametrize("case", list(CASES))
def test_master_refuses_to_start_on_a_bad_model(case, encrypted_model, tmp_path):
    env, values = _prepare(case, encrypted_model, tmp_path)
    status, out, err = run_gunicorn(env)
    assert status == 1, out + err
    refusals = [line for line in err.splitlines() if line.startswith(REFUSED)]
    assert len(refusals) == 1, err
    for fragment in CASES[case]:
        fragment = fragment.format(**values)
        assert fragment in refusals[0], err
    # Refused in the master: no socket, no worker, no model load, no traceback.
    assert "Listening at" not in err and "Booting worker" not in err
    assert "Traceback" not in err
    text = out + err
    for form in _key_forms(encrypted_model.key):
        assert form not in text


# -- the service on an encrypted directory writes nothing ---------------------------------------


def _needles(plaintext: bytes, size: int = 128, step: int = 32 * 1024) -> list[bytes]:
    """Pieces of the checkpoint to search the disk for: its start (the zip header and the
    pickle's name) and high-entropy windows of tensor data across the whole file."""
    needles = [plaintext[:size]]
    for offset in range(step, len(plaintext) - size, step):
        for start in range(offset, offset + step - size, size):
            window = plaintext[start : start + size]
            if len(set(window)) >= 64:  # random float bytes, not padding or a header
                needles.append(window)
                break
    return needles


def _files(roots: list[Path]) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_encrypted_model_serves_parses_and_no_plaintext_reaches_the_disk(
    encrypted_model, namespace
):
    model = encrypted_model
    wrapper, dirs = namespace(
        {"/tmp/model": model.directory, "/tmp/key": model.key_file.parent}, read_only=True
    )
    env = {
        "M2FP_MODEL_DIR": "/tmp/model",
        "M2FP_WEIGHTS_KEY_FILE": f"/tmp/key/{model.key_file.name}",
        "M2FP_WEIGHTS_SHA256": model.sha256,
        "M2FP_RATE_LIMIT": "1000 per minute",
        "HOME": "/tmp/home",
        "TMPDIR": "/tmp",
    }
    writable = [dirs["tmp"], dirs["var_tmp"], dirs["shm"]]
    watched = [*writable, model.directory, model.key_file.parent]
    watch = TreeWatch()
    try:
        for root in watched:
            watch.add(root)
        server = Gunicorn(env, wrapper=wrapper)
        try:
            master = server.workers()[0].parent()
            assert "libtorch" not in Path(f"/proc/{master.pid}/maps").read_text()
            for body, kind in [
                (images.png(96, 72), "image/png"),
                (images.jpeg(), "image/jpeg"),
                (images.png(64, 128), "image/png"),
            ]:
                r = requests.post(
                    server.url + "/api/v1/parse?output=json",
                    data=body,
                    headers={"Content-Type": kind},
                    timeout=60,
                )
                assert r.status_code == 200, r.text[:300]
                assert r.json()["persons"] and r.json()["label_map"]["data"]
        finally:
            server.stop()
        events = watch.drain(timeout_ms=500)
    finally:
        watch.close()
    logs = server.logs()
    assert f"encrypted, key id {model.key.key_id}, sha256 {model.sha256} (pinned)" in logs
    assert "model ready" in logs and "Read-only file system" not in logs
    for form in _key_forms(model.key):
        assert form not in logs
    # The expected writes, both in /dev/shm (memory): gunicorn's heartbeat, an empty file
    # created and unlinked at once, then only its times change; and the master's directory of
    # metric files (prometheus-client's multiprocess mode: counters, made before any request).
    # Nothing else, anywhere the server can write.
    heartbeat = {"CREATE", "DELETE", "ATTRIB", "CLOSE_WRITE"}
    unexpected = [
        e
        for e in events
        if not (e.path.startswith(f"{dirs['shm']}/wgunicorn-") and set(e.kinds) <= heartbeat)
        and not e.path.startswith(f"{dirs['shm']}/m2fp-metrics-")
    ]
    assert unexpected == []
    assert any(e.path.startswith(f"{dirs['shm']}/wgunicorn-") for e in events)  # the watch works
    # And no piece of the plaintext in any file there (the .enc and the key included).
    needles = _needles(model.plaintext)
    assert len(needles) > 16
    for path in _files(watched):
        data = path.read_bytes()
        assert not any(needle in data for needle in needles), path
