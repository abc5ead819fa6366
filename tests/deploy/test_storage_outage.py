"""A Redis outage under real gunicorn: every protected request is refused with 503
`unavailable` and Retry-After while the rate-limit storage is down (also the ones admitted just
before it went), the operator log says so once per outage and once per recovery, and
`m2fp_ratelimit_storage_up` follows it."""

from __future__ import annotations

import http.client
import re
import time

import pytest
import requests

from tests.support import images
from tests.support.servers import Gunicorn, RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PARSE = "/api/v1/parse?output=json"


def parse(server: Gunicorn) -> requests.Response:
    return requests.post(
        server.url + PARSE,
        data=images.png(),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )


def storage_gauge(server: Gunicorn) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    return float(re.search(r"^m2fp_ratelimit_storage_up (\S+)$", text, re.M).group(1))


def assert_unavailable(status: int, headers: dict[str, str], body: str) -> None:
    assert status == 503, body
    assert '"code":"unavailable"' in body.replace(" ", "")
    assert int(headers["Retry-After"]) >= 1


def test_redis_outage_refuses_in_flight_and_new_requests_and_logs_once(tiny_model_dir, tmp_path):
    redis = RedisServer(tmp_path)
    env = {
        "M2FP_MODEL_DIR": str(tiny_model_dir),
        "M2FP_RATE_LIMIT": "1000 per minute",
        "M2FP_RATELIMIT_STORAGE": redis.url,
    }
    server = Gunicorn(env)
    try:
        first = parse(server)
        assert first.status_code == 200, first.text
        assert first.headers["X-RateLimit-Limit"] == "1000"
        assert storage_gauge(server) == 1.0

        # In flight: the head arrives (the limit is checked, the view starts reading the body)
        # while Redis is up; the rest of the body after it stopped.
        body = images.png()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.putrequest("POST", PARSE)
        conn.putheader("Content-Type", "image/png")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body[:100])
        time.sleep(1.0)
        redis.stop()
        conn.send(body[100:])
        response = conn.getresponse()
        assert_unavailable(response.status, dict(response.getheaders()), response.read().decode())
        conn.close()

        for _ in range(5):
            r = parse(server)
            assert_unavailable(r.status_code, r.headers, r.text)
        ready = requests.get(server.url + "/readyz", timeout=10)
        assert_unavailable(ready.status_code, ready.headers, ready.text)
        assert storage_gauge(server) == 0.0

        redis = RedisServer(tmp_path, port=redis.port)
        deadline = time.monotonic() + 20
        while (r := parse(server)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert "Retry-After" not in r.headers
        assert storage_gauge(server) == 1.0
    finally:
        server.stop()
        redis.stop()
    log = "".join(server.stderr)
    assert log.count("rate-limit storage unreachable") == 1, log
    assert log.count("rate-limit storage reachable again") == 1, log
    assert "Traceback" not in log, log
