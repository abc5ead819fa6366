"""The deployment end to end: real nginx (rendered from nginx/) in front of real gunicorn
running `app:create_app()` with a tiny model, certificates from scripts/dev-cert, everything on
127.0.0.1 and free ports. What a client sees (TLS, headers, errors, limits, its own address in
the app's log) and what reaches the disk while uploads and large results pass (nothing).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import subprocess
import sys
import time

import psutil
import pytest
from PIL import Image

from m2fp_client import Client
from nginx.render import max_body_bytes_for
from tests.support import images
from tests.support.edge import (
    SPILL,
    assert_json_error,
    assert_security_headers,
    post,
    request,
    slow_request,
    start_nginx,
)
from tests.support.fswatch import disk_watch
from tests.support.paths import REPO
from tests.support.servers import Gunicorn
from tests.support.slow_clients import raw_exchange

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

MAX_UPLOAD_MB = 4  # smaller than the default 10 to keep the suite lean; nginx follows it
UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
CAP = max_body_bytes_for(UPLOAD_BYTES)
# Parses per minute per client address (M2FP_RATE_LIMIT). Tests that parse come from their own
# loopback addresses (127.0.0.N), so each has its own budget; 127.0.0.1 is the client's (2).
APP_LIMIT = 3


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir):
    server = Gunicorn(
        {
            "M2FP_MODEL_DIR": str(tiny_model_dir),
            "M2FP_TRUSTED_PROXIES": "1",
            "M2FP_AUDIT_CLIENT": "full",
            "M2FP_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
            "M2FP_RATE_LIMIT": f"{APP_LIMIT} per minute",
            "M2FP_BAN_AFTER": "1000",
        },
        log_dir=tmp_path_factory.mktemp("app"),
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge(tmp_path_factory, tls, app, monkeypatch_module):
    monkeypatch_module.setenv("M2FP_MAX_UPLOAD_MB", str(MAX_UPLOAD_MB))
    server = start_nginx(tmp_path_factory.mktemp("nginx"), tls, [f"127.0.0.1:{app.port}"])
    assert server.options.max_body_bytes == CAP
    yield server
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def audit_entry(app, request_id: str, timeout: float = 5.0) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in app.audit():
            if entry["request_id"] == request_id:
                return entry
        time.sleep(0.05)
    return None


# -- pages, API and headers through TLS ---------------------------------------------------------


def test_the_page_over_https_with_hsts_and_the_apps_headers(edge, tls):
    status, headers, body = request(edge, tls, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert_security_headers(headers)
    assert "script-src 'self'" in headers["Content-Security-Policy"]  # the app's page CSP
    assert headers["X-Frame-Options"] == "DENY"
    assert b"<html" in body.lower()


def test_api_success_carries_nginx_request_id_through_the_app(edge, tls, app):
    status, headers, body = request(edge, tls, "GET", "/api/v1/classes?lang=en")
    assert status == 200
    assert_security_headers(headers)
    assert headers["Cache-Control"] == "no-store"
    assert len(json.loads(body)["classes"]) == 20
    request_id = headers["X-Request-ID"]
    entry = audit_entry(app, request_id)  # the app logged nginx's id: log lines join
    assert entry is not None and entry["path"] == "/api/v1/classes"
    logged = edge.access_entry(request_id)
    assert logged is not None and logged["path"] == "/api/v1/classes"
    assert "lang=en" not in edge.access_log.read_text()


def test_app_errors_pass_through_with_hsts(edge, tls, app):
    status, headers, body = post(
        edge, tls, "/api/v1/parse", b"not an image at all", {"Content-Type": "image/png"},
        source="127.0.0.20",
    )  # fmt: skip
    assert status in (415, 422)
    assert json.loads(body)["error"]["code"] in ("unsupported_media_type", "unprocessable_image")
    assert_security_headers(headers)
    assert headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_http_redirects_to_https(edge):
    conn = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=10)
    conn.request("GET", "/kiosk", headers={"Host": "localhost"})
    response = conn.getresponse()
    assert response.status == 308
    assert response.getheader("Location") == f"https://localhost:{edge.https_port}/kiosk"
    conn.close()


# -- body cap -----------------------------------------------------------------------------------


def test_nginx_cap_equals_the_apps_largest_body():
    from web.context import json_body_allowance

    assert json_body_allowance(UPLOAD_BYTES) == CAP
    assert max_body_bytes_for(10 * 1024 * 1024) == json_body_allowance(10 * 1024 * 1024)


def test_one_byte_over_the_cap_gets_nginx_json_413_and_never_reaches_the_app(edge, tls, app):
    status, headers, body = post(
        edge, tls, "/api/v1/parse", b"\0" * (CAP + 1), {"Content-Type": "application/json"},
        source="127.0.0.21",
    )  # fmt: skip
    payload = assert_json_error(
        status, headers, body, expected_status=413, code="payload_too_large"
    )
    assert audit_entry(app, payload["error"]["request_id"], timeout=0.5) is None


def json_body_at_cap(image: bytes) -> bytes:
    """{"image": "<base64>"} padded with JSON whitespace to exactly the cap."""
    body = json.dumps({"image": base64.b64encode(image).decode()}).encode()
    assert len(body) <= CAP
    return body + b" " * (CAP - len(body))


def test_uploads_at_the_cap_and_a_large_result_to_a_slow_reader_write_nothing(
    tmp_path, edge, tls, app
):
    """The privacy promise across nginx and gunicorn: fatrace (every filesystem, by process
    id) while the app takes JSON uploads of exactly the cap (Content-Length and chunked) and
    sends an ~8 MB overlay to a client that reads slowly. Only the logs may be written."""
    body = json_body_at_cap(images.jpeg(160, 120))
    # its overlay PNG is as incompressible as the noise
    noisy = images.encode(images.noise(1800, 1800), "JPEG", quality=70)
    assert len(noisy) < UPLOAD_BYTES
    before = len(edge.errors())
    pids = edge.pids() | app.pids()
    with disk_watch(tmp_path, edge.temp_paths()) as watch:
        json_headers = {"Content-Type": "application/json", "Accept": "application/json"}
        status, _, result = post(
            edge, tls, "/api/v1/parse?output=json", body, json_headers, source="127.0.0.30"
        )
        assert status == 200, result[:300]
        assert json.loads(result)["image"] == {"width": 160, "height": 120}
        chunks = (body[i : i + 16384] for i in range(0, len(body), 16384))
        status, _, result = post(
            edge, tls, "/api/v1/parse?output=json", chunks, json_headers, chunked=True,
            source="127.0.0.31",
        )  # fmt: skip
        assert status == 200, result[:300]
        status, head, received = slow_request(
            edge, tls, "POST", "/api/v1/parse?output=overlay&format=png", noisy,
            {"Content-Type": "image/jpeg", "Accept": "image/png"}, source="127.0.0.32",
        )  # fmt: skip
        assert status == 200 and b"image/png" in head.lower()
        assert received > 6 * 1024 * 1024  # well over nginx's 4 MiB of response buffers
    log = edge.errors()[before:]
    assert not SPILL.search(log), log
    allowed = [edge.access_log, edge.error_log, app.stdout_path, app.stderr_path]
    assert watch.writes(pids, allowed=allowed) == []
    assert watch.dir_events == []
    for path in edge.temp_paths():
        assert list(path.iterdir()) == []
    # the watch saw both servers write where they should: their logs
    seen = {(pid in edge.pids(), path) for _, pid, flags, path in watch.events if "W" in flags}
    assert (True, str(edge.access_log)) in seen
    assert any(path == str(app.stdout_path) for _, pid, flags, path in watch.events if pid in pids)


# -- limits and the client's address ------------------------------------------------------------


def test_the_app_limits_and_logs_the_real_client_not_a_forwarded_header(edge, tls, app):
    """Two clients (two loopback addresses) both claim X-Forwarded-For: 9.9.9.9. The app
    counts and logs each by the address nginx saw: the first runs out, the second does not."""
    image = images.jpeg(64, 48)
    headers = {"Content-Type": "image/jpeg", "X-Forwarded-For": "9.9.9.9"}
    statuses = []
    for _ in range(APP_LIMIT + 1):
        status, answer_headers, body = post(
            edge, tls, "/api/v1/parse?output=json", image, headers, source="127.0.0.40"
        )
        statuses.append(status)
    assert statuses == [200] * APP_LIMIT + [429]
    assert json.loads(body)["error"]["code"] == "rate_limited"
    assert int(answer_headers["Retry-After"]) > 0  # the app's own 429, passed through
    assert_security_headers(answer_headers)
    status, other_headers, _ = post(
        edge, tls, "/api/v1/parse?output=json", image, headers, source="127.0.0.41"
    )
    assert status == 200
    entry = audit_entry(app, other_headers["X-Request-ID"])
    assert entry is not None and entry["client"] == "127.0.0.41"
    assert "9.9.9.9" not in app.logs()


def test_edge_limit_answers_json_429_with_retry_after_before_the_app(tmp_path, tls, app):
    edge = start_nginx(tmp_path, tls, [f"127.0.0.1:{app.port}"], edge_rate="1r/m", edge_burst=1)
    try:
        codes = [request(edge, tls, "GET", "/healthz", source="127.0.0.50")[0] for _ in range(2)]
        assert codes == [200, 200]
        status, headers, body = request(edge, tls, "GET", "/healthz", source="127.0.0.50")
        payload = assert_json_error(status, headers, body, expected_status=429, code="rate_limited")
        assert headers["Retry-After"] == "1"
        assert audit_entry(app, payload["error"]["request_id"], timeout=0.5) is None
        # another client is not affected
        assert request(edge, tls, "GET", "/healthz", source="127.0.0.51")[0] == 200
    finally:
        edge.stop()


# -- the Python client --------------------------------------------------------------------------


def test_python_client_and_cli_through_nginx_with_the_dev_ca(edge, tls, tmp_path):
    client = Client(f"https://localhost:{edge.https_port}", ca_bundle=tls.ca)
    photo = images.jpeg(96, 64, seed=3)
    overlay = Image.open(io.BytesIO(client.parse(photo, alpha=0.5)))
    assert overlay.format == "PNG" and overlay.size == (96, 64)
    assert len(client.classes()) == 20
    assert client.ready()
    src, out = tmp_path / "photo.jpg", tmp_path / "result.json"
    src.write_bytes(photo)
    done = subprocess.run(
        [sys.executable, "-m", "m2fp_client", "parse", str(src), "--json", "--out", str(out)]
        + ["--url", f"https://localhost:{edge.https_port}", "--ca-bundle", str(tls.ca)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "M2FP_API_KEY"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["image"] == {"width": 96, "height": 64} and "persons" in result


# -- a read-only root, as in the containers ----------------------------------------------------


def stop_tree(proc) -> None:
    """Stop a wrapped server: signal the server itself (bubblewrap forwards nothing)."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    proc.wait(30)


def test_both_serve_a_parse_on_a_read_only_root(tmp_path, tls, tiny_model_dir):
    """What docker-compose.yml promises (read_only: true; tmpfs only where needed), checked
    with bubblewrap: the whole filesystem read-only, plus the app's /dev/shm (gunicorn's
    heartbeat) and nginx's runtime directory (the edge's /run/nginx tmpfs)."""
    base = ["bwrap", "--die-with-parent", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    app = Gunicorn(
        {
            "M2FP_MODEL_DIR": str(tiny_model_dir),
            "M2FP_TRUSTED_PROXIES": "1",
            "M2FP_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
        },
        wrapper=[*base, "--tmpfs", "/dev/shm"],
        log_dir=tmp_path / "app",
    )
    try:
        directory = tmp_path / "nginx"
        directory.mkdir()
        edge = start_nginx(
            directory,
            tls,
            [f"127.0.0.1:{app.port}"],
            wrapper=[*base, "--bind", str(directory), str(directory)],
            max_body_bytes=CAP,
        )
        try:
            status, headers, body = post(
                edge, tls, "/api/v1/parse?output=json", images.jpeg(120, 90),
                {"Content-Type": "image/jpeg"}, source="127.0.0.60",
            )  # fmt: skip
            assert status == 200, body[:300]
            assert json.loads(body)["image"] == {"width": 120, "height": 90}
            body = json_body_at_cap(images.jpeg(64, 64))
            status, _, answer = post(
                edge, tls, "/api/v1/parse?output=json", body,
                {"Content-Type": "application/json"}, source="127.0.0.61",
            )  # fmt: skip
            assert status == 200, answer[:300]
            assert not SPILL.search(edge.errors())
        finally:
            stop_tree(edge.proc)
    finally:
        app.stop()
    assert "Read-only file system" not in app.logs()


# -- gunicorn's own refusals through nginx ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"GET /healthz?k=v HTTP/1.1\r\nHost: localhost\r\nX-A: a\x01b\r\n\r\n", 400,
         "bad_request"),
        (b"GET /\xff?a=\xfe HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
         + b"".join(b"X-H%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431, "headers_too_large"),
    ],
    ids=["control-character", "high-bytes-in-path", "too-many-headers"],
)  # fmt: skip
def test_requests_nginx_passes_but_gunicorn_refuses_get_json_not_html(edge, tls, data, status,
                                                                      code):  # fmt: skip
    """nginx forwards these; gunicorn refuses them itself, before the app. Stock gunicorn
    answered HTML quoting the request line, which nginx passed on."""
    response = raw_exchange(edge.https_port, data, ca=tls.ca)
    assert_json_error(
        response.status, response.headers, response.body, expected_status=status, code=code
    )
    assert b"<html" not in response.body
    # the answer carries nginx's request id: it joins nginx's access log line
    entry = edge.access_entry(response.headers["X-Request-ID"])
    assert entry is not None and entry["status"] == status
