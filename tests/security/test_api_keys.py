"""security.api_keys: the keys file, constant-time lookup, and the key-issuing CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys

import pytest

from security.api_keys import (
    ApiKey,
    ApiKeyFileError,
    ApiKeyStore,
    hash_key,
    main,
    new_key,
)
from tests.support.paths import REPO

KEYS = {"editor-1": "m2fp_first-secret-key", "kiosk": "m2fp_second", "batch.job_3": "third"}


def _write(path, document) -> None:
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys.json"
    _write(
        path,
        {
            "keys": [
                {"id": "editor-1", "sha256": hash_key(KEYS["editor-1"]), "limit": "100/minute"},
                {"id": "kiosk", "sha256": hash_key(KEYS["kiosk"]).upper()},
                {"id": "batch.job_3", "sha256": hash_key(KEYS["batch.job_3"]), "limit": None},
            ]
        },
    )
    return path


# -------------------------------------------------------------------------------- lookup


def test_lookup_finds_each_key_by_its_hash(keys_file):
    store = ApiKeyStore.from_file(keys_file)
    assert len(store) == 3
    assert store.lookup(KEYS["editor-1"]) == ApiKey("editor-1", "100/minute")
    assert store.lookup(KEYS["kiosk"]) == ApiKey("kiosk", None)  # upper-case hex is fine
    assert store.lookup(KEYS["batch.job_3"]) == ApiKey("batch.job_3", None)


@pytest.mark.parametrize(
    "presented",
    [None, "", "m2fp_first-secret-ke", "m2fp_first-secret-key ", hash_key("third"), "é" * 600],
)
def test_lookup_misses(keys_file, presented):
    assert ApiKeyStore.from_file(keys_file).lookup(presented) is None


def test_lookup_compares_every_entry_in_constant_time(keys_file, monkeypatch):
    """No early exit: a hit on the first entry, on the last, and a miss all make one
    `hmac.compare_digest` call per entry (the real one, counted)."""
    store = ApiKeyStore.from_file(keys_file)
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented, expected in [
        (KEYS["editor-1"], "editor-1"),
        (KEYS["batch.job_3"], "batch.job_3"),
        ("m2fp_unknown", None),
    ]:
        calls.clear()
        found = store.lookup(presented)
        assert (found.id if found else None) == expected
        assert calls == [(32, 32)] * 3  # raw SHA-256 digests, every entry


def test_store_repr_shows_no_hashes(keys_file):
    store = ApiKeyStore.from_file(keys_file)
    text = repr(store) + repr(store.keys)
    assert "3 keys" in repr(store)
    for key in KEYS.values():
        assert hash_key(key) not in text.lower() and key not in text


def test_new_keys_are_strong_and_distinct():
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith("m2fp_") and len(key) == 5 + 43  # 32 random bytes, base64url


# ------------------------------------------------------------------------- malformed files

SECRET = "m2fp_this-is-a-raw-key-pasted-by-mistake"
GOOD = {"id": "ok", "sha256": hash_key("ok-key")}


@pytest.mark.parametrize(
    "document, expected",
    [
        ("{not json", "not valid JSON: Expecting property name"),
        ([GOOD], 'expected an object {"keys": [...]}'),
        ({"keys": {"ok": GOOD}}, 'expected an object {"keys": [...]}'),
        ({"keys": [GOOD, "ok"]}, "keys[1]: expected an object"),
        ({"keys": [{"sha256": hash_key("x")}]}, "keys[0]: id must be 1-64 characters"),
        ({"keys": [{"id": "a b", "sha256": hash_key("x")}]}, "keys[0]: id must be"),
        ({"keys": [{"id": "x" * 65, "sha256": hash_key("x")}]}, "keys[0]: id must be"),
        ({"keys": [GOOD, {"id": "editor"}]}, "keys[1] ('editor'): sha256 must be 64 hex"),
        ({"keys": [{"id": "editor", "sha256": SECRET}]}, "never the key itself"),
        ({"keys": [{"id": "e", "sha256": hash_key("x")[:-1]}]}, "keys[0] ('e'): sha256"),
        ({"keys": [{**GOOD, "limt": "5/minute"}]}, "keys[0] ('ok'): unknown field(s) limt"),
        ({"keys": [{**GOOD, "limit": "lots"}]}, "limit 'lots' is not a rate limit"),
        ({"keys": [{**GOOD, "limit": 100}]}, "limit must be a string"),
        ({"keys": [GOOD, {**GOOD, "sha256": hash_key("y")}]}, "keys[1]: the id 'ok' is used twice"),
        ({"keys": [GOOD, {**GOOD, "id": "other"}]}, "keys[1] ('other'): the same key hash"),
    ],
)
def test_malformed_files_name_the_entry_and_never_a_key(tmp_path, document, expected):
    path = tmp_path / "keys.json"
    _write(path, document)
    with pytest.raises(ApiKeyFileError) as caught:
        ApiKeyStore.from_file(path)
    message = str(caught.value)
    assert expected in message and str(path) in message
    assert SECRET not in message
    assert GOOD["sha256"] not in message and hash_key("y") not in message


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ApiKeyFileError, match="no such keys file"):
        ApiKeyStore.from_file(tmp_path / "absent.json")
    with pytest.raises(ApiKeyFileError, match="cannot read"):
        ApiKeyStore.from_file(tmp_path)  # a directory


# ----------------------------------------------------------------------------------- CLI


def _new(capsys, *args):
    code = main(["new", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_new_adds_a_hashed_entry_atomically_with_mode_0600(tmp_path, capsys):
    path = tmp_path / "keys.json"
    code, out, err = _new(
        capsys, "--id", "editor-1", "--limit", "100 per minute", "--file", str(path)
    )
    assert code == 0
    key = out.strip()
    assert out == key + "\n" and key.startswith("m2fp_")  # stdout: the key, alone, once
    assert key not in err and "shown once" in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ApiKeyStore.from_file(path).lookup(key) == ApiKey("editor-1", "100 per minute")
    assert key not in path.read_text()  # only its hash is stored
    assert (
        json.loads(path.read_text())["keys"][0]["sha256"]
        == hashlib.sha256(key.encode()).hexdigest()
    )

    path.chmod(0o644)
    code, out2, err2 = _new(capsys, "--id", "kiosk", "--file", str(path))
    second = out2.strip()
    assert code == 0 and second != key
    first_hash = hash_key(key)
    assert first_hash not in out2 + err2 and key not in out2 + err2  # nothing about other keys
    store = ApiKeyStore.from_file(path)
    assert [k.id for k in store.keys] == ["editor-1", "kiosk"]
    assert store.lookup(second) == ApiKey("kiosk", None) and store.lookup(key).id == "editor-1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]  # no temp file left


def test_cli_new_refuses_bad_input_and_leaves_the_file_alone(tmp_path, capsys):
    path = tmp_path / "keys.json"
    assert _new(capsys, "--id", "editor", "--file", str(path))[0] == 0
    before = path.read_bytes()
    for args, message in [
        (["--id", "editor"], "exists already"),
        (["--id", "x y"], "--id must be"),
        (["--id", "other", "--limit", "often"], "not a rate limit"),
    ]:
        code, out, err = _new(capsys, *args, "--file", str(path))
        assert code == 1 and out == "" and message in err
        assert path.read_bytes() == before
    broken = tmp_path / "broken.json"
    broken.write_text('{"keys": [{"id": "a"}]}')
    code, out, err = _new(capsys, "--id", "new", "--file", str(broken))
    assert code == 1 and out == "" and "keys[0] ('a'): sha256" in err
    assert broken.read_text() == '{"keys": [{"id": "a"}]}'


def test_cli_new_without_a_file_prints_the_entry_to_add(capsys, monkeypatch):
    monkeypatch.delenv("M2FP_API_KEYS_FILE", raising=False)
    code, out, err = _new(capsys, "--id", "solo", "--limit", "5/second")
    key = out.strip()
    entry = json.loads(err.strip().splitlines()[-1])
    assert code == 0 and entry == {"id": "solo", "sha256": hash_key(key), "limit": "5/second"}


def test_cli_list_and_revoke_use_the_environment_file(keys_file, capsys, monkeypatch):
    monkeypatch.setenv("M2FP_API_KEYS_FILE", str(keys_file))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "editor-1\t100/minute",
        "kiosk\t(default limit)",
        "batch.job_3\t(default limit)",
    ]
    assert main(["revoke", "--id", "kiosk"]) == 0
    store = ApiKeyStore.from_file(keys_file)
    assert store.lookup(KEYS["kiosk"]) is None and store.lookup(KEYS["editor-1"]) is not None
    assert main(["revoke", "--id", "kiosk"]) == 1
    assert "no key with the id 'kiosk'" in capsys.readouterr().err
    monkeypatch.delenv("M2FP_API_KEYS_FILE")
    assert main(["list"]) == 1
    assert "pass --file or set M2FP_API_KEYS_FILE" in capsys.readouterr().err


def test_cli_runs_as_a_module(tmp_path):
    path = tmp_path / "keys.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "security.api_keys", "new", "--id", "cli", "--file", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert ApiKeyStore.from_file(path).lookup(done.stdout.strip()) == ApiKey("cli", None)
