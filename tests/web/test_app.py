"""create_app and gunicorn.conf.py: configuration errors stop the start, and the gunicorn
settings keep uploads off the disk and CUDA out of the master."""

from __future__ import annotations

import io
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from flask import request
from gunicorn.config import Config

from app import create_app
from settings import SettingsError
from tests.support.paths import REPO
from web.context import FORM_OVERHEAD, InMemoryRequest, json_body_allowance


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"rate_limit": "lots"}, "M2FP_RATE_LIMIT"),
        ({"api_keys_required": True}, "M2FP_API_KEYS_REQUIRED"),
        ({"api_keys_file": Path("/nonexistent/keys")}, "M2FP_API_KEYS_FILE"),
        ({"ratelimit_storage": "nosuch://x"}, "M2FP_RATELIMIT_STORAGE"),
        ({"audit_client": "everything"}, "M2FP_AUDIT_CLIENT"),
        ({"device": "cpu", "precision": "fp16"}, "M2FP_PRECISION"),
        ({"device": "tpu"}, "M2FP_DEVICE"),
    ],
)
def test_bad_configuration_stops_the_start(overrides, variable):
    with pytest.raises(SettingsError, match=variable):
        create_app(overrides)


def test_environment_is_read(monkeypatch, make_app):
    monkeypatch.setenv("M2FP_RATE_LIMIT", "7 per hour")
    monkeypatch.setenv("M2FP_MAX_UPLOAD_MB", "2")
    app = make_app()
    settings = app.extensions["m2fp_settings"]
    assert settings.rate_limit == "7 per hour"
    assert app.config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024 + FORM_OVERHEAD
    assert app.request_class is InMemoryRequest
    assert app.extensions["m2fp"] is app.extensions["m2fp_service"].engine


def test_json_allowance_covers_base64_of_the_cap():
    cap = 10 * 1024 * 1024
    assert json_body_allowance(cap) >= len("data:image/png;base64,") + 4 * ((cap + 2) // 3)
    assert json_body_allowance(cap) < cap * 4 // 3 + 2 * FORM_OVERHEAD


def test_file_parts_stay_in_memory(app):
    """Werkzeug would spool a file part over 500 KB to a temporary file; ours stays BytesIO."""
    big = b"\x89PNG" + b"\0" * 2_000_000
    kind, value = _parsed_file(app, big)
    assert kind is io.BytesIO
    assert value == big


def test_file_parts_are_not_cut_by_the_form_field_allowance(app):
    """A CR at the end of werkzeug's first 64 KiB read stays in the decoder's buffer; the
    next read must still fit MAX_FORM_MEMORY_SIZE (a 64 KiB allowance answered 413)."""
    head, boundary = _multipart(b"")
    head = head[: head.index(b"\r\n--" + boundary.encode() + b"--")]
    data = bytearray(b"\x89PNG" + b"\0" * 300_000)
    data[64 * 1024 - len(head) - 1] = ord("\r")
    assert _parsed_file(app, bytes(data))[1] == bytes(data)


def _parsed_file(app, data: bytes) -> tuple[type, bytes]:
    """(stream type, content) of the `image` part, parsed from a real stream (the test
    client would spool the body itself)."""
    body, boundary = _multipart(data)
    with app.test_request_context(
        "/api/v1/parse",
        method="POST",
        input_stream=io.BytesIO(body),
        content_type=f"multipart/form-data; boundary={boundary}",
        content_length=len(body),
    ):
        stream = request.files["image"].stream
        return type(stream), stream.getvalue()


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "xXxBoundaryxXx"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary


def test_gunicorn_settings():
    settings = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    known = Config().settings
    for name in (
        "worker_class",
        "worker_tmp_dir",
        "preload_app",
        "control_socket_disable",
        "threads",
        "timeout",
        "accesslog",
        "bind",
    ):
        assert name in known, name  # a misspelt setting would be silently ignored
    # gthread, with request heads read on the main loop (gunicorn_worker.py)
    assert settings["worker_class"] == "gunicorn_worker.DeadlineThreadWorker"
    from gunicorn.workers.gthread import ThreadWorker

    from gunicorn_worker import DeadlineThreadWorker

    assert issubclass(DeadlineThreadWorker, ThreadWorker)
    assert settings["worker_tmp_dir"] == "/dev/shm"
    assert settings["preload_app"] is False
    assert settings["control_socket_disable"] is True
    assert settings["accesslog"] is None
    assert settings["threads"] == 16 + 4 + 4  # M2FP_QUEUE_MAX + M2FP_BATCH_MAX + 4
    unknown = {
        name
        for name, value in settings.items()
        if not name.startswith("_")
        and not callable(value)
        and not isinstance(value, type(sys))
        and not isinstance(value, type)
    } - set(known)
    assert unknown == set()


def test_gunicorn_config_imports_no_torch():
    """The gunicorn master loads its config file and (no preload) nothing of the app: the
    config must not pull in torch, let alone CUDA."""
    code = (
        "import runpy, sys; runpy.run_path('gunicorn.conf.py');"
        "assert 'torch' not in sys.modules, 'config imports torch'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
