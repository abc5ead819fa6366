"""The app's own port, reached directly (a shared host, a cluster network): unfinished request
heads and trickling bodies cannot hold its threads, and gunicorn's own refusals are JSON in the
API's form that quote nothing of the request, in the answer or in the log.

Real gunicorn (gunicorn.conf.py, `app:create_app()`, 4 threads) with the tiny model on
127.0.0.1; raw sockets (tests/support/slow_clients.py). The deadlines themselves are waited out
with the same worker at shorter deadlines (`QuickDeadlineWorker`).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time

import pytest
import requests

from tests.support.servers import Gunicorn
from tests.support.slow_clients import partial_heads, raw_exchange

pytestmark = [pytest.mark.deploy, pytest.mark.slow, pytest.mark.timeout(300)]

CANARY = "c4n4ry7e1l"


def env(model_dir) -> dict[str, str]:
    return {"M2FP_MODEL_DIR": str(model_dir), "M2FP_RATE_LIMIT": "1000 per minute"}


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    server = Gunicorn(env(tiny_model_dir))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def quick_app(tiny_model_dir):
    server = Gunicorn(
        env(tiny_model_dir), extra_args=["-k", "tests.support.slow_clients.QuickDeadlineWorker"]
    )
    yield server
    server.stop()


def healthz_seconds(url: str) -> float:
    started = time.monotonic()
    response = requests.get(url + "/healthz", timeout=10)
    assert response.status_code == 200
    return time.monotonic() - started


def test_thirty_unfinished_heads_do_not_block_healthz(app):
    with partial_heads(app.port, 30):
        time.sleep(0.5)
        assert max(healthz_seconds(app.url) for _ in range(3)) < 2.0
    with partial_heads(app.port, 30, head=b"POST /api/v1/parse HTTP/1.1\r\nContent-Len"):
        time.sleep(0.5)
        assert healthz_seconds(app.url) < 2.0


def test_an_unfinished_head_is_closed_at_the_head_deadline(quick_app):
    with partial_heads(quick_app.port, 1) as (sock,):
        started = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(100) == b""  # closed without an answer
        assert 1.0 < time.monotonic() - started < 4.0


def test_a_trickling_body_is_cut_at_the_request_deadline(quick_app):
    """A body sent a byte at a time ends at the request deadline (3 s here), and its thread
    is free again; without the deadline it would hold the thread for as long as it trickles."""
    head = (
        b"POST /api/v1/parse?output=json HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    socks = []
    try:
        for _ in range(4):  # every thread of the worker
            sock = socket.create_connection(("127.0.0.1", quick_app.port), timeout=10)
            sock.sendall(head)
            socks.append(sock)
        started = time.monotonic()
        while time.monotonic() - started < 3.5:  # past the deadline, still sending
            for sock in socks:
                with contextlib.suppress(OSError):  # closed by the server: expected
                    sock.sendall(b"\x89")
            time.sleep(0.25)
        assert healthz_seconds(quick_app.url) < 3.0
    finally:
        for sock in socks:
            sock.close()
    assert CANARY not in quick_app.logs()


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (f"GET /?api_key={CANARY} HTTP/1.1\r\nHost: x\r\nBad Name: {CANARY}\r\n\r\n", 400,
         "bad_request"),
        (f"GET /{CANARY}?q={CANARY} HTTP/9.9\r\nHost: x\r\n\r\n", 400, "bad_request"),
        (f"GET /?{CANARY}={'a' * 5000} HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (f"POST /?k={CANARY} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400,
         "bad_request"),
        (f"GET /?k={CANARY} HTTP/1.1\r\nHost: x\r\nX-A: {CANARY}\x01\r\n\r\n", 400, "bad_request"),
    ],
    ids=["header-name", "version", "long-line", "te-gzip", "control-char"],
)  # fmt: skip
def test_gunicorns_own_refusals_are_json_and_quote_nothing(app, data, status, code):
    response = raw_exchange(app.port, data.encode("latin-1"))
    assert response.status == status, response.raw[:300]
    assert response.headers["Content-Type"] == "application/json"
    payload = json.loads(response.body)
    assert payload["error"]["code"] == code
    assert re.fullmatch(r"[0-9a-f]{32}", payload["error"]["request_id"])
    assert response.headers["X-Request-ID"] == payload["error"]["request_id"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert CANARY not in response.raw.decode("latin-1")
    time.sleep(0.2)
    assert CANARY not in app.logs()
    assert healthz_seconds(app.url) < 2.0
