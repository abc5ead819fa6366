"""Every answer the edge can give has the house's form: requests nginx refuses while parsing them
(a bad escape, a NUL, an address too long, TRACE, an unknown transfer coding, HTTP/2.0 in the
request line) get JSON errors with the full header set, HTTP/0.9 gets nothing, and the redirect
to HTTPS goes to the configured name, never to the Host a client sent.

Real nginx on 127.0.0.1, in front of the small echoing upstream (tests/support/deploy.py);
requests go out as raw bytes (tests/support/slow_clients.py), as no HTTP library sends them.
"""

from __future__ import annotations

import http.client

import pytest

from tests.support.edge import (
    assert_json_error,
    echo_upstream,
    start_nginx,
)
from tests.support.slow_clients import raw_exchange

pytestmark = pytest.mark.deploy


@pytest.fixture(scope="module")
def edge(tmp_path_factory, tls):
    with echo_upstream() as upstream:
        server = start_nginx(
            tmp_path_factory.mktemp("nginx"), tls, [f"127.0.0.1:{upstream.server_port}"]
        )
        yield server
        server.stop()


def head(request_line: str, *headers: str) -> bytes:
    lines = [request_line, "Host: localhost", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (head("GET /x%00 HTTP/1.1"), 400, "bad_request"),
        (head("GET /%ZZ HTTP/1.1"), 400, "bad_request"),
        (head("GET /a/%2e%2e/%2e%2e/b HTTP/1.1"), 400, "bad_request"),
        (head("GET /" + "a" * 20_000 + " HTTP/1.1"), 414, "uri_too_long"),
        (head("GET /?q=" + "a" * 20_000 + " HTTP/1.1"), 414, "uri_too_long"),
        (head("GET / HTTP/1.1", "X-Big: " + "b" * 20_000), 431, "headers_too_large"),
        (head("TRACE / HTTP/1.1"), 405, "method_not_allowed"),
        (head("POST /api/v1/parse HTTP/1.1", "Transfer-Encoding: gzip"), 501, "not_implemented"),
        (head("GET / HTTP/2.0"), 505, "http_version_not_supported"),
        (head("GET / HTTP/1.1", "Content-Length: -1"), 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: other\r\n\r\n", 400, "bad_request"),
    ],
    ids=[
        "nul",
        "bad-escape",
        "above-root",
        "long-path",
        "long-query",
        "big-header",
        "trace",
        "te-gzip",
        "http-2.0-line",
        "negative-length",
        "two-hosts",
    ],
)
def test_requests_nginx_refuses_get_json_errors_with_every_header(edge, tls, data, status, code):
    response = raw_exchange(edge.https_port, data, ca=tls.ca)
    assert response.status is not None, response.raw[:300]
    assert_json_error(
        response.status, response.headers, response.body, expected_status=status, code=code
    )
    assert "[alert]" not in edge.errors() and "named location" not in edge.errors()


def test_http_0_9_is_refused_with_nothing(edge, tls):
    """An HTTP/0.9 request would get the page with no headers at all (no HSTS, no CSP):
    the connection is closed instead."""
    response = raw_exchange(edge.https_port, b"GET /\r\n", ca=tls.ca)
    assert response.raw == b""


def test_redirect_goes_to_the_configured_name_not_the_clients_host(edge):
    conn = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=10)
    conn.request("GET", "/kiosk?x=1", headers={"Host": "evil.example"})
    response = conn.getresponse()
    assert response.status == 308
    assert response.getheader("Location") == f"https://localhost:{edge.https_port}/kiosk?x=1"
    conn.close()


def test_redirect_server_name_is_a_setting(tmp_path, tls):
    with echo_upstream() as upstream:
        server = start_nginx(
            tmp_path, tls, [f"127.0.0.1:{upstream.server_port}"], server_name="parse.example"
        )
        try:
            response = raw_exchange(server.http_port, head("GET /a HTTP/1.1"))
            assert response.status == 308
            assert response.headers["Location"] == f"https://parse.example:{server.https_port}/a"
            assert raw_exchange(server.http_port, b"GET /\r\n").raw == b""
        finally:
            server.stop()


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (head("GET /%ZZ HTTP/1.1"), 400, "bad_request"),
        (head("GET /" + "a" * 20_000 + " HTTP/1.1"), 414, "uri_too_long"),
        (head("TRACE / HTTP/1.1"), 405, "method_not_allowed"),
        (head("GET / HTTP/2.0"), 505, "http_version_not_supported"),
    ],
    ids=["bad-escape", "long-path", "trace", "http-2.0-line"],
)
def test_the_plain_http_port_refuses_in_the_same_form(edge, data, status, code):
    response = raw_exchange(edge.http_port, data)
    assert_json_error(
        response.status, response.headers, response.body, expected_status=status, code=code
    )


def test_plain_http_on_the_https_port_gets_a_json_400(edge):
    response = raw_exchange(edge.https_port, head("GET /healthz HTTP/1.1"))
    assert_json_error(
        response.status, response.headers, response.body, expected_status=400, code="bad_request"
    )
