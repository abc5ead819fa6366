"""A gunicorn worker killed (SIGKILL) in the middle of a parse, behind real nginx.

A parse has no side effects, so with two upstreams nginx sends it again to the other one and
the client gets its 200; with one, the client gets nginx's JSON 502 with Retry-After. The
upstreams batch with a 3 s wait (M2FP_BATCH_MAX=4, M2FP_BATCH_WAIT_MS=3000), so a lone parse
sits in the engine long enough to find the worker that holds it and kill it.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import psutil
import pytest
import requests

from tests.support import images
from tests.support.edge import assert_json_error, post, start_nginx
from tests.support.servers import Gunicorn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PARSE = "/api/v1/parse?output=json"


@pytest.fixture(scope="module")
def apps(tiny_model_dir):
    env = {
        "M2FP_MODEL_DIR": str(tiny_model_dir),
        "M2FP_TRUSTED_PROXIES": "1",
        "M2FP_RATE_LIMIT": "1000 per minute",
        "M2FP_BATCH_MAX": "4",
        "M2FP_BATCH_WAIT_MS": "3000",
        "M2FP_DRAIN_SECONDS": "0",
    }
    servers = [Gunicorn(env), Gunicorn(env)]
    yield servers
    for server in servers:
        server.stop()


def wait_ready(server: Gunicorn, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(server.url + "/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("not ready again:\n" + server.logs())


def parsing_worker(servers: list[Gunicorn], timeout: float = 10) -> psutil.Process:
    """The worker holding nginx's connection: the one with the parse."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for server in servers:
            for worker in server.workers():
                connections = worker.net_connections(kind="tcp")
                if any(
                    c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port
                    for c in connections
                ):
                    return worker
        time.sleep(0.02)
    raise AssertionError("no worker received the parse")


def parse_while_killing(edge, tls, servers: list[Gunicorn]) -> tuple:
    answer: list[tuple] = []
    client = threading.Thread(
        target=lambda: answer.append(
            post(edge, tls, PARSE, images.png(), {"Content-Type": "image/png"})
        )
    )
    client.start()
    worker = parsing_worker(servers)
    worker.send_signal(signal.SIGKILL)
    client.join(120)
    assert answer, "no answer"
    return answer[0]


def test_a_parse_whose_worker_dies_is_answered_by_the_other_upstream(tmp_path, tls, apps):
    for server in apps:
        wait_ready(server)
    edge = start_nginx(tmp_path, tls, [f"127.0.0.1:{server.port}" for server in apps])
    try:
        status, headers, body = parse_while_killing(edge, tls, apps)
        assert status == 200, body[:300]
        assert json.loads(body)["image"] == {"width": 128, "height": 96}
        entry = edge.access_entry(headers["X-Request-ID"])
        assert entry is not None and len(entry["upstream"].split(", ")) == 2, entry
    finally:
        edge.stop()


def test_with_one_upstream_the_client_gets_a_json_502_with_retry_after(tmp_path, tls, apps):
    server = apps[1]
    wait_ready(server)
    edge = start_nginx(tmp_path, tls, [f"127.0.0.1:{server.port}"])
    try:
        status, headers, body = parse_while_killing(edge, tls, [server])
        assert_json_error(status, headers, body, expected_status=502, code="bad_gateway")
        assert int(headers["Retry-After"]) >= 1
    finally:
        edge.stop()
