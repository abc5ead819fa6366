"""The edge for the deployment tests: real nginx (Debian's binary) rendered from nginx/, dev
certificates from scripts/dev-cert, a small echoing upstream, requests through TLS, and the
checks every response from the edge must pass. The app behind it is `servers.Gunicorn`; the
filesystem watch is `fswatch.disk_watch`.

Everything binds 127.0.0.1 on ports chosen at run time and is stopped by the caller (the
fixtures in the test modules wrap these in finalisers).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from nginx.render import TEMP_SUBDIRS, NginxOptions, security_headers, write_config
from tests.support.paths import REPO
from tests.support.servers import free_port, serving, wait_for_port

NGINX = "/usr/sbin/nginx"


# -- TLS material -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_dev_cert(directory: Path, *args: str) -> TlsFiles:
    """Run scripts/dev-cert into `directory`; return the CA, certificate and key paths."""
    subprocess.run(
        [str(REPO / "scripts" / "dev-cert"), "--dir", str(directory), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")


def tls_context(ca: Path, *, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context that verifies against `ca`; pinned to one protocol version if given.
    SECLEVEL=0 lets OpenSSL 3 even offer TLS 1.0/1.1, so a refusal is the server's."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    if version is not None:
        with warnings.catch_warnings():  # TLSVersion.TLSv1/TLSv1_1 are deprecated names
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = version
            ctx.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


# -- a small upstream ---------------------------------------------------------------------------


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    """POST/GET anything: answers JSON describing what arrived (method, path, headers, body
    length, whether it came chunked). GET /big?bytes=N answers N bytes of data. GET /status/N
    answers status N with a Retry-After of 7."""

    protocol_version = "HTTP/1.1"
    server: _EchoServer

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        self.server.requests.append({"path": self.path, "headers": dict(self.headers)})
        if self.path.startswith("/big"):
            size = int(self.path.partition("bytes=")[2] or 0)
            self._send(200, os.urandom(size), "application/octet-stream")
            return
        if self.path.startswith("/status/"):
            self._send(int(self.path.rsplit("/", 1)[1]), b'{"upstream": true}', extra=True)
            return
        info = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_bytes": len(body),
        }
        self._send(200, json.dumps(info).encode())

    def _send(self, status: int, data: bytes, ctype="application/json", extra=False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        if extra:
            self.send_header("Retry-After", "7")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class _EchoServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    requests: list[dict]


@contextlib.contextmanager
def echo_upstream() -> Iterator[_EchoServer]:
    """A real HTTP server on 127.0.0.1 standing in for the app (an upstream, not a mock of
    nginx): it reports what nginx forwarded."""
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    server.requests = []
    with serving(server):
        yield server


# -- nginx --------------------------------------------------------------------------------------


@dataclass
class Nginx:
    options: NginxOptions
    conf: Path
    error_log: Path
    access_log: Path
    proc: subprocess.Popen | None = None
    https_port: int = 0
    http_port: int = 0

    @property
    def temp_dir(self) -> Path:
        return Path(self.options.runtime_dir) / "temp"

    def temp_paths(self) -> list[Path]:
        return [self.temp_dir / sub for sub in TEMP_SUBDIRS]

    def pids(self) -> set[int]:
        """The master and its workers."""
        assert self.proc is not None
        pids = {self.proc.pid}
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in children.read_text().split()}
        return pids

    def errors(self) -> str:
        return self.error_log.read_text() if self.error_log.exists() else ""

    def access_entry(self, request_id: str, timeout: float = 5.0) -> dict | None:
        """The access log line of `request_id`; nginx writes it after the response, so wait."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.access_log.read_text().splitlines():
                entry = json.loads(line)
                if entry["request_id"] == request_id:
                    return entry
            time.sleep(0.05)
        return None

    def url(self, path: str = "/") -> str:
        return f"https://localhost:{self.https_port}{path}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_nginx(
    directory: Path,
    tls: TlsFiles,
    upstreams: Iterable[str],
    wrapper: Sequence[str] = (),
    https_hosts: Sequence[str] = ("127.0.0.1",),
    **overrides: object,
) -> Nginx:
    """Render a config into `directory` with free ports and start nginx in the foreground.
    The runtime directory (pid, temp paths) is `directory/run`; logs are files beside it.
    The HTTPS port listens on each of `https_hosts` (`[::1]` for IPv6)."""
    https_port, http_port = free_port(), free_port()
    error_log, access_log = directory / "error.log", directory / "access.log"
    options = NginxOptions(
        runtime_dir=directory / "run",
        cert=tls.cert,
        key=tls.key,
        https_listen=tuple(f"{host}:{https_port}" for host in https_hosts),
        http_listen=(f"127.0.0.1:{http_port}",),
        upstreams=tuple(upstreams),
        static_root=None,
        access_log=str(access_log),
        error_log=str(error_log),
        worker_processes="1",
    )
    options = replace(options, **overrides)
    conf = write_config(options, directory / "nginx.conf")
    server = Nginx(options, conf, error_log, access_log, https_port=https_port)
    server.http_port = http_port
    server.proc = subprocess.Popen(
        [*wrapper, NGINX, "-e", str(error_log), "-p", str(options.runtime_dir), "-c", str(conf)]
        + ["-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # -e: everything goes to the error log file
    )
    try:
        wait_for_port(https_port, proc=server.proc)
    except Exception:
        server.stop()
        raise RuntimeError(f"nginx did not start:\n{server.errors()}") from None
    return server


SPILL = re.compile(r"buffered to a temporary file|\[(crit|alert|emerg)\]")


# -- requests through nginx ---------------------------------------------------------------------

HSTS = "max-age=63072000; includeSubDomains"


def https(edge: Nginx, ca: Path, source: str | None = None) -> http.client.HTTPSConnection:
    """A connection to nginx's HTTPS port, verified against `ca`, optionally from another
    loopback address (127.0.0.0/8): a different client as far as nginx and the app know."""
    return http.client.HTTPSConnection(
        "localhost",
        edge.https_port,
        context=tls_context(ca),
        timeout=60,
        source_address=(source, 0) if source else None,
    )


def request(
    edge, tls, method: str, path: str, body=None, headers=None, *, chunked=False, source=None
):
    """One request; returns (status, headers, body)."""
    conn = https(edge, tls.ca, source)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def post(edge, tls, path: str, body, headers=None, *, chunked=False, source=None):
    return request(edge, tls, "POST", path, body, headers, chunked=chunked, source=source)


def slow_request(
    edge,
    tls,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    pause_every: int = 16,
    pause: float = 0.05,
    source: str = "127.0.0.1",
) -> tuple[int, bytes, int]:
    """A request over a raw TLS socket whose response is read 64 KiB at a time with pauses (a
    slow client, small receive buffer): returns (status, head, body bytes received)."""
    ctx = tls_context(tls.ca)
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with (
        socket.create_connection(
            ("127.0.0.1", edge.https_port), timeout=60, source_address=(source, 0)
        ) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = conn.recv(65536)
            assert chunk, "connection closed before the response head"
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        total, blocks = len(rest), 0
        while total < length:
            chunk = conn.recv(65536)
            assert chunk, "connection closed early"
            total += len(chunk)
            blocks += 1
            if blocks % pause_every == 0:
                time.sleep(pause)
        return status, head, total


def assert_security_headers(headers: dict[str, str]) -> None:
    """HSTS from nginx, no version in Server, and the app's nosniff: on every response."""
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["strict-transport-security"] == HSTS
    assert lower["x-content-type-options"] == "nosniff"
    assert lower["server"] == "nginx"  # server_tokens off: no version


def assert_json_error(status, headers, body, *, expected_status: int, code: str) -> dict:
    """An error nginx produced itself: JSON in the API's shape, with every header the app
    would send on an error, HSTS, and its request id."""
    assert status == expected_status, body[:300]
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["content-type"].startswith("application/json")
    payload = json.loads(body)
    assert payload["error"]["code"] == code
    assert re.fullmatch(r"[0-9a-f]{32}", payload["error"]["request_id"])
    assert lower["x-request-id"] == payload["error"]["request_id"]
    assert_security_headers(headers)
    for name, value in security_headers(hsts=HSTS, cache_control="no-store").items():
        assert lower[name.lower()] == value, name
    return payload
