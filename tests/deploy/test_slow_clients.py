"""Slow clients cannot lock everyone else out at the edge: a hundred uploads trickling one byte at
a time from several addresses (IPv4 and IPv6 loopback) hold only their own clients' slots, and a
normal client parses meanwhile within seconds. IPv6 clients are grouped by /64.

Real nginx on 127.0.0.1 and [::1] in front of the small echoing upstream: the uploads are
nginx's to hold (it buffers every body before the app sees it), so the app is not needed.
"""

from __future__ import annotations

import json
import time

import pytest

from nginx.render import NginxOptions
from tests.support.edge import post
from tests.support.slow_clients import (
    loopback_sources,
    raw_exchange,
    start_dual_stack_nginx,
    trickling,
)

pytestmark = pytest.mark.deploy

UPLOAD_HEAD = (
    b"POST /api/v1/parse HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
    b"Content-Length: 5000000\r\n\r\n"
)


def timed_parse(edge, tls, source: str) -> tuple[int, float]:
    started = time.monotonic()
    status, _, body = post(
        edge, tls, "/api/v1/parse", b"\xff\xd8" + b"x" * 50_000, {"Content-Type": "image/jpeg"},
        source=source,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    if status == 200:
        assert json.loads(body)["body_bytes"] == 50_002
    return status, elapsed


def test_a_hundred_trickling_uploads_do_not_lock_out_a_normal_client(tmp_path, tls, upstream):
    edge = start_dual_stack_nginx(tmp_path, tls, [f"127.0.0.1:{upstream.server_port}"])
    sources = loopback_sources(8)  # 127.0.0.2-9, and ::1
    try:
        with trickling(
            edge.https_port, UPLOAD_HEAD, count=100, sources=sources, ca=tls.ca, interval=1.0
        ) as trickle:
            assert trickle.opened == 100, (trickle.opened, trickle.refused)
            statuses = [timed_parse(edge, tls, f"127.0.0.{n}") for n in (20, 21, 22)]
            time.sleep(1.5)  # each trickler reads its answer, if any, after its next byte
            held = trickle.opened - len(trickle.answered)
        assert [status for status, _ in statuses] == [200, 200, 200]
        assert max(elapsed for _, elapsed in statuses) < 5.0, statuses
        # each trickling client holds at most its own upload slots; the rest were refused
        uploads = NginxOptions.uploads_per_client
        assert held <= uploads * len(sources), held
        assert all(answer.startswith(b"HTTP/1.1 429 ") for answer in trickle.answered)
    finally:
        edge.stop()


def test_an_ipv6_64_is_one_client(tmp_path, tls, upstream):
    """Addresses from one /64 share the per-client caps; another /64 has its own. The edge
    takes the client address from X-Forwarded-For here (a load balancer on loopback), which
    is how these tests get more than one IPv6 address."""
    edge = start_dual_stack_nginx(
        tmp_path,
        tls,
        [f"127.0.0.1:{upstream.server_port}"],
        real_ip_from=("127.0.0.0/8",),
        uploads_per_client=2,
    )

    def head(address: str) -> bytes:
        return UPLOAD_HEAD.replace(b"\r\n\r\n", f"\r\nX-Forwarded-For: {address}\r\n\r\n".encode())

    try:
        port, ca = edge.https_port, tls.ca
        with trickling(port, head("2001:db8:1:2::a"), count=2, sources=["127.0.0.2"], ca=ca):
            with trickling(
                port, head("2001:db8:1:2:ffff::b"), count=1, sources=["127.0.0.3"], ca=ca
            ) as same_64:
                time.sleep(1.5)
                assert [a[:13] for a in same_64.answered] == [b"HTTP/1.1 429 "]
            with trickling(
                port, head("2001:db8:1:3::a"), count=1, sources=["127.0.0.4"], ca=ca
            ) as other_64:
                time.sleep(1.5)
                assert other_64.answered == []
    finally:
        edge.stop()


def test_a_body_that_stops_arriving_is_dropped(tmp_path, tls, upstream):
    """nginx closes a connection whose body stops arriving for --body-timeout (without an
    answer: nginx sends none for a timed-out body), and the app never sees it."""
    edge = start_dual_stack_nginx(
        tmp_path, tls, [f"127.0.0.1:{upstream.server_port}"], body_timeout_s=1
    )
    try:
        seen = len(upstream.requests)
        started = time.monotonic()
        response = raw_exchange(edge.https_port, UPLOAD_HEAD + b"\xff\xd8", ca=tls.ca)
        assert response.raw == b""
        assert 0.9 < time.monotonic() - started < 5
        assert len(upstream.requests) == seen
    finally:
        edge.stop()
