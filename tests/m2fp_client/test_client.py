"""m2fp_client against a real local HTTPS server that answers from a script: retries on
429/502/503/504 with Retry-After, errors, CA-bundle verification with the dev CA, the CLI.
The client against real nginx + the app: tests/deploy/test_e2e.py."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from m2fp_client import Client, ClientError, ConnectionFailed, ServiceError
from m2fp_client.client import _retry_after, sniff_image_type
from tests.support import images
from tests.support.edge import make_dev_cert
from tests.support.paths import REPO
from tests.support.servers import serving

pytestmark = pytest.mark.deploy
PNG_OUT = b"\x89PNG\r\n\x1a\n-overlay"


class _Scripted(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ScriptedServer

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(
            {
                "time": time.monotonic(),
                "path": self.path,
                "headers": dict(self.headers),
                "body": body,
            }
        )
        status, headers, payload = (
            self.server.script.pop(0) if self.server.script else (200, {}, PNG_OUT)
        )
        if isinstance(payload, dict):
            payload = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json", **headers}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _ScriptedServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    script: list
    seen: list


@contextlib.contextmanager
def scripted_https(tls) -> Iterator[_ScriptedServer]:
    server = _ScriptedServer(("127.0.0.1", 0), _Scripted)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.cert, tls.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.script, server.seen = [], []
    with serving(server):
        yield server


@pytest.fixture()
def server(tls):
    with scripted_https(tls) as s:
        yield s


@pytest.fixture(scope="module")
def photo() -> bytes:
    return images.jpeg(32, 24)


def client_for(server, tls, **kwargs) -> Client:
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # really sleeps; records what it was asked
        waits.append(seconds)
        time.sleep(seconds)

    client = Client(
        f"https://localhost:{server.server_port}", ca_bundle=tls.ca, sleep=sleep, **kwargs
    )
    client.waits = waits  # type: ignore[attr-defined]
    return client


def error(status: int, code: str, retry_after: str | None = None):
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = {"error": {"code": code, "message": f"{code} happened", "request_id": "r-1"}}
    return (status, headers, body)


def test_parse_uploads_the_raw_image_and_returns_the_overlay(server, tls, photo):
    client = client_for(server, tls, api_key="k-123")
    assert client.parse(photo, alpha=0.4) == PNG_OUT
    seen = server.seen[0]
    assert seen["path"] == "/api/v1/parse?output=overlay&alpha=0.4"
    assert seen["headers"]["Content-Type"] == "image/jpeg"
    assert seen["headers"]["X-API-Key"] == "k-123"
    assert seen["body"] == photo


def test_parse_json_and_cutout_parameters(server, tls, photo, tmp_path):
    server.script = [(200, {}, {"image": {"width": 32, "height": 24}})]
    path = tmp_path / "p.jpg"
    path.write_bytes(photo)
    client = client_for(server, tls)
    assert client.parse(path, output="json", instances=False) == {
        "image": {"width": 32, "height": 24}
    }
    assert server.seen[0]["path"] == "/api/v1/parse?output=json&instances=false"
    assert server.seen[0]["headers"]["Accept"] == "application/json"
    client.parse(photo, output="cutout", classes=[5, 9], format="webp")
    assert server.seen[1]["path"] == "/api/v1/parse?output=cutout&format=webp&classes=5%2C9"


def test_retries_503_then_succeeds_honouring_retry_after(server, tls, photo):
    server.script = [error(503, "overloaded", "1"), error(502, "bad_gateway")]
    client = client_for(server, tls, backoff=0.05)
    assert client.parse(photo) == PNG_OUT
    assert len(server.seen) == 3
    assert client.waits[0] == 1.0
    assert server.seen[1]["time"] - server.seen[0]["time"] >= 1.0
    assert 0.025 <= client.waits[1] <= 0.1  # no Retry-After: the jittered backoff


def test_429_with_retry_after_is_retried(server, tls, photo):
    server.script = [error(429, "rate_limited", "1")]
    client = client_for(server, tls)
    assert client.parse(photo) == PNG_OUT
    assert client.waits == [1.0] and len(server.seen) == 2


def test_a_retry_after_beyond_the_bound_fails_at_once(server, tls, photo):
    server.script = [error(429, "temporarily_banned", "3600")]
    client = client_for(server, tls, max_retry_after=30)
    with pytest.raises(ServiceError) as caught:
        client.parse(photo)
    assert caught.value.status == 429 and caught.value.retry_after == 3600
    assert caught.value.code == "temporarily_banned" and caught.value.request_id == "r-1"
    assert client.waits == [] and len(server.seen) == 1


def test_retries_are_bounded(server, tls, photo):
    server.script = [error(504, "gateway_timeout")] * 5
    client = client_for(server, tls, retries=2, backoff=0.01)
    with pytest.raises(ServiceError, match="504 gateway_timeout"):
        client.parse(photo)
    assert len(server.seen) == 3


def test_client_errors_are_not_retried(server, tls, photo):
    server.script = [error(415, "unsupported_media_type")]
    client = client_for(server, tls)
    with pytest.raises(ServiceError) as caught:
        client.parse(photo)
    assert caught.value.status == 415 and "unsupported_media_type happened" in str(caught.value)
    assert len(server.seen) == 1


def test_a_redirect_names_the_url_to_use(server, tls, photo):
    server.script = [(308, {"Location": "https://localhost:8443/api/v1/parse"}, b"")]
    with pytest.raises(ClientError, match="redirects to https://localhost:8443/api/v1/parse"):
        client_for(server, tls).parse(photo)


def test_non_json_error_bodies_still_give_a_clear_error(server, tls, photo):
    server.script = [(500, {"X-Request-ID": "abc"}, b"<html>oops</html>")]
    with pytest.raises(ServiceError, match=r"500 http_error: .*\(request id abc\)"):
        client_for(server, tls).parse(photo)


def test_certificate_verification_uses_the_ca_bundle(server, tls, photo, tmp_path):
    # the system store does not know the dev CA: refused, with a hint
    client = Client(f"https://localhost:{server.server_port}", retries=0)
    with pytest.raises(ConnectionFailed, match="--ca-bundle"):
        client.parse(photo)
    # another CA (a fresh dev CA) is refused too, and not retried
    other = make_dev_cert(tmp_path / "other")
    client = Client(f"https://localhost:{server.server_port}", ca_bundle=other.ca, retries=3)
    with pytest.raises(ConnectionFailed, match="verification failed"):
        client.parse(photo)
    assert server.seen == []
    # the right CA works
    assert client_for(server, tls).parse(photo) == PNG_OUT


def test_unreachable_service_is_a_connection_error(tls, photo):
    with scripted_https(tls) as gone:
        port = gone.server_port
    client = Client(f"https://localhost:{port}", ca_bundle=tls.ca, retries=1, backoff=0.01)
    with pytest.raises(ConnectionFailed, match="could not connect"):
        client.parse(photo)


def test_inputs_are_checked_before_uploading(tls, tmp_path):
    with pytest.raises(ClientError, match="JPEG, PNG or WebP"):
        sniff_image_type(b"GIF89a....")
    assert sniff_image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    with pytest.raises(ClientError, match="does not exist"):
        Client(ca_bundle=tmp_path / "missing.pem")
    with pytest.raises(ClientError, match="https://"):
        Client("localhost:8443")
    with pytest.raises(ClientError, match="cannot read"):
        Client(ca_bundle=tls.ca).parse(tmp_path / "missing.jpg")


def test_retry_after_accepts_seconds_and_http_dates():
    assert _retry_after("5") == 5.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 20))
    assert 15 <= _retry_after(later) <= 21


def run_cli(*args: str, env_key: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("M2FP_API_KEY", None)
    if env_key:
        env["M2FP_API_KEY"] = env_key
    return subprocess.run(
        [sys.executable, "-m", "m2fp_client", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


def test_cli_writes_the_overlay(server, tls, photo, tmp_path):
    src, out = tmp_path / "photo.jpg", tmp_path / "overlay.png"
    src.write_bytes(photo)
    url = f"https://localhost:{server.server_port}"
    done = run_cli(
        "parse", str(src), "--url", url, "--ca-bundle", str(tls.ca), "--out", str(out),
        env_key="k-env",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == PNG_OUT
    assert server.seen[0]["headers"]["X-API-Key"] == "k-env"


def test_cli_json_to_stdout_and_errors(server, tls, photo, tmp_path):
    src = tmp_path / "photo.jpg"
    src.write_bytes(photo)
    url = f"https://localhost:{server.server_port}"
    server.script = [(200, {}, {"persons": []}), error(413, "payload_too_large")]
    done = run_cli("parse", str(src), "--json", "--url", url, "--ca-bundle", str(tls.ca))
    assert done.returncode == 0 and json.loads(done.stdout) == {"persons": []}
    done = run_cli("parse", str(src), "--json", "--url", url, "--ca-bundle", str(tls.ca))
    assert done.returncode == 1
    assert "413 payload_too_large" in done.stderr and "request id r-1" in done.stderr
    done = run_cli("parse", str(src), "--url", url, "--ca-bundle", str(tls.ca))
    assert done.returncode == 2 and "--out FILE is needed" in done.stderr
    done = run_cli("parse", str(src), "--json", "--url", url)
    assert done.returncode == 2 and "verification failed" in done.stderr
