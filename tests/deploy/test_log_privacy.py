"""Nothing a client sends reaches a log but its path: canaries in query strings, referrers,
user agents, other headers and upload file names, sent to `./scripts/run` (through nginx, and to
gunicorn's port directly) in requests that make every component log something (edge 429s,
nginx's 400/404/413, gunicorn's refusals, the app's errors), are found in no log file or
stream: the script's stdout (the app's audit log) and stderr (nginx's error log and gunicorn's),
nginx's access log, anything under its var directory. Limit refusals are counted in the access
log, not written one by one.

Also nginx/log_filter.py alone, on the lines nginx writes.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
import requests
from gunicorn.http.errors import InvalidHeaderName, NoMoreData
from PIL import Image

from gunicorn_worker import RequestDataFilter
from nginx.log_filter import WITHHELD, redact
from tests.support.edge import tls_context
from tests.support.paths import REPO
from tests.support.servers import free_port
from tests.support.slow_clients import raw_exchange

CANARY = f"c4n4ry{secrets.token_hex(4)}"


def jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(out, "JPEG")
    return out.getvalue()


# -- the filter alone ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "2026/12/05 08:00:00 [error] 7#7: *5 client intended to send too large body: 99 bytes,"
            f' client: 127.0.0.1, server: _, request: "POST /p?api_key={CANARY} HTTP/1.1",'
            f' host: "localhost:8443", referrer: "https://{CANARY}/"',
            "2026/12/05 08:00:00 [error] 7#7: *5 client intended to send too large body: 99 bytes"
            + WITHHELD,
        ),
        (
            '2026/12/05 08:00:00 [crit] 7#7: *9 open() "/run/temp/client_body/0000000001" failed'
            f' (13: Permission denied), client: 127.0.0.1, server: _, request: "POST /?{CANARY}'
            ' HTTP/1.1", host: "localhost"',
            '2026/12/05 08:00:00 [crit] 7#7: *9 open() "..." failed (13: Permission denied)'
            + WITHHELD,
        ),
        (
            f'2026/12/05 08:00:00 [error] 7#7: *2 open() "/static/a", client: {CANARY}" failed'
            f' (13: Permission denied), client: 127.0.0.1, server: _, request: "GET /?{CANARY}"',
            '2026/12/05 08:00:00 [error] 7#7: *2 open() "..."' + WITHHELD,
        ),
        (
            "2026/12/05 08:00:00 [notice] 7#7: signal process started",
            "2026/12/05 08:00:00 [notice] 7#7: signal process started",
        ),
    ],
    ids=["413", "spill", "quoted-context", "no-request"],
)
def test_the_filter_keeps_nginxs_words_and_drops_the_request(line, expected):
    assert redact(line) == expected
    assert CANARY not in redact(line)


def test_gunicorns_log_lines_lose_the_request_data_their_arguments_carry():
    def filtered(msg: str, *args: object) -> str:
        record = logging.LogRecord("gunicorn.error", logging.DEBUG, __file__, 1, msg, args, None)
        assert RequestDataFilter().filter(record)
        return record.getMessage()

    assert filtered("Ignored premature client disconnection. %s", NoMoreData(CANARY.encode())) == (
        "Ignored premature client disconnection. NoMoreData"
    )
    assert filtered("Error handling request %s %s", "GET", f"/?k={CANARY}") == (
        "Error handling request"
    )
    invalid = f"Invalid request from ip=10.0.0.1: {InvalidHeaderName(CANARY)}"
    assert filtered(invalid) == "Invalid request from ip=10.0.0.1"
    assert filtered("Listening at: %s (%s)", "http://127.0.0.1:8000", 7) == (
        "Listening at: http://127.0.0.1:8000 (7)"
    )


# -- scripts/run, end to end -------------------------------------------------------------------


def start_run(tmp_path, model_dir) -> tuple[subprocess.Popen, dict]:
    ports = {"https": free_port(), "http": free_port(), "app": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2FP_")}
    env.update(
        {
            "M2FP_MODEL_DIR": str(model_dir),
            "M2FP_HTTPS_PORT": str(ports["https"]),
            "M2FP_HTTP_PORT": str(ports["http"]),
            "M2FP_APP_PORT": str(ports["app"]),
            "M2FP_LISTEN": "127.0.0.1",
            "M2FP_VAR_DIR": str(tmp_path / "var"),
            "M2FP_SKIP_SETUP": "1",
            "M2FP_RATE_LIMIT": "1000 per minute",
            "M2FP_BAN_AFTER": "1000",
            "OMP_NUM_THREADS": "1",
        }
    )
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "run")],
        cwd=tmp_path,
        env=env,
        stdout=(tmp_path / "run.out").open("wb"),
        stderr=(tmp_path / "run.err").open("wb"),
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while "run: ready: " not in (tmp_path / "run.err").read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError((tmp_path / "run.err").read_text(errors="replace")[-3000:])
        time.sleep(0.2)
    return proc, ports


def canary_requests_through_nginx(port: int, ca) -> None:
    url = f"https://localhost:{port}"
    headers = {
        "Referer": f"https://{CANARY}.example/ref",
        "User-Agent": f"{CANARY}-agent",
        "X-Anything": f"{CANARY}-header",
    }
    with requests.Session() as s:
        s.headers.update(headers)

        def get(path: str) -> int:
            return s.get(url + path, verify=ca, timeout=30).status_code

        def post(path: str, files: dict) -> requests.Response:
            return s.post(url + path, files=files, verify=ca, timeout=60)

        assert get(f"/api/v1/classes?api_key={CANARY}") == 200
        parsed = post(
            "/api/v1/parse?output=json",
            {"image": (f"{CANARY}-photo.jpg", jpeg(), "image/jpeg")},
        )
        assert parsed.status_code == 200, parsed.text[:300]
        bad = (f"{CANARY}-bad.jpg", b"not an image " + CANARY.encode(), "image/jpeg")
        assert post("/api/v1/parse", {"image": bad}).status_code in (415, 422)
        assert post(f"/api/v1/parse?{CANARY}={CANARY}", {"image": bad}).status_code == 400
        assert get(f"/static/missing.js?{CANARY}") == 404
        assert get(f"/api/v1/nothing?{CANARY}") == 404
        # edge 429s: past 20 r/s with a burst of 40
        statuses = [get(f"/healthz?api_key={CANARY}") for _ in range(70)]
        assert 429 in statuses
    # nginx's own refusals: a bad escape (400), a body over the cap (413, an error-level line)
    raw = f"GET /%ZZ?{CANARY} HTTP/1.1\r\nHost: localhost\r\nReferer: {CANARY}\r\n\r\n"
    assert raw_exchange(port, raw.encode(), ca=ca).status == 400
    conn = http.client.HTTPSConnection("localhost", port, context=tls_context(ca), timeout=30)
    conn.putrequest("POST", f"/api/v1/parse?api_key={CANARY}")
    conn.putheader("Content-Length", str(10**9))
    conn.putheader("Referer", CANARY)
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()


def canary_requests_to_the_app_port(port: int) -> None:
    refused = raw_exchange(
        port, f"GET /?api_key={CANARY} HTTP/1.1\r\nHost: x\r\nBad Name: {CANARY}\r\n\r\n".encode()
    )
    assert refused.status == 400
    missing = raw_exchange(
        port,
        f"GET /nothing?{CANARY} HTTP/1.1\r\nHost: x\r\nReferer: {CANARY}\r\n"
        f"User-Agent: {CANARY}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert missing.status == 404
    # a client that goes away in the middle of its head
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET /?{CANARY} HTTP/1.1\r\nReferer: {CANARY}".encode())


@pytest.mark.deploy
@pytest.mark.slow
def test_no_canary_reaches_any_log_of_scripts_run(tmp_path, tiny_model_dir):
    proc, ports = start_run(tmp_path, tiny_model_dir)
    ca = tmp_path / "var" / "tls" / "ca.pem"
    try:
        canary_requests_through_nginx(ports["https"], ca)
        canary_requests_to_the_app_port(ports["app"])
        time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
    stdout = (tmp_path / "run.out").read_text(errors="replace")
    stderr = (tmp_path / "run.err").read_text(errors="replace")
    access = (tmp_path / "var" / "log" / "nginx-access.log").read_text(errors="replace")
    assert CANARY not in stdout
    assert CANARY not in stderr
    assert CANARY not in access
    for path in (tmp_path / "var").rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
    # the logs did record what happened, without the request
    assert "client intended to send too large body" in stderr and WITHHELD in stderr
    assert "Invalid request from 127.0.0.1: InvalidHeaderName" in stderr
    assert "limiting requests" not in stderr
    entries = [json.loads(line) for line in access.splitlines()]
    assert sum(entry["status"] == 429 for entry in entries) >= 1  # counted here
    assert any(entry["status"] == 413 for entry in entries)
    assert '"outcome"' in stdout  # the audit log is there
