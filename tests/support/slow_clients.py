"""Hostile and slow clients for the edge and app-port tests: raw requests (bytes no HTTP library
would send), trickling uploads and unfinished request heads, each bounded in time and closed by
the caller's context.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gunicorn_worker import DeadlineThreadWorker
from tests.support.edge import Nginx, TlsFiles, start_nginx, tls_context


@dataclass(frozen=True)
class RawResponse:
    """What came back on a raw connection: the bytes, and their head parsed when there is one
    (`status` is None for a response without a status line: HTTP/0.9, or nothing at all)."""

    raw: bytes
    status: int | None
    headers: dict[str, str]
    body: bytes


def parse_response(raw: bytes) -> RawResponse:
    head, sep, body = raw.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not sep or not match:
        return RawResponse(raw, None, {}, raw)
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip()] = value.strip()
    return RawResponse(raw, int(match.group(1)), headers, body)


def raw_exchange(
    port: int,
    data: bytes,
    *,
    ca: Path | None = None,
    source: str = "127.0.0.1",
    timeout: float = 10.0,
) -> RawResponse:
    """Send `data` as it is (over TLS when `ca` is given) and read until the server closes or
    `timeout` passes."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as raw:
        raw.settimeout(timeout)
        raw.bind((source, 0))
        raw.connect((host, port))
        conn: socket.socket = (
            tls_context(ca).wrap_socket(raw, server_hostname="localhost") if ca else raw
        )
        conn.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(TimeoutError, ConnectionResetError, ssl.SSLError):
            while time.monotonic() < deadline:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
        return parse_response(received)


# -- many slow connections -----------------------------------------------------------------------


@dataclass
class Trickle:
    """`count` connections from `sources` (round robin), each sending `head` and then one byte
    of the body every `interval` seconds, until stopped. `opened` counts the connections that
    got through the TCP (and TLS) handshake; `refused` those that did not."""

    port: int
    head: bytes
    count: int
    sources: Sequence[str]
    ca: Path | None = None
    interval: float = 1.0
    opened: int = 0
    refused: int = 0
    sent: int = 0  # connections whose request head went out
    answered: list[bytes] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _connect(self, source: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in source else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_STREAM)
        raw.settimeout(10)
        raw.bind((source, 0))
        raw.connect(("::1" if family == socket.AF_INET6 else "127.0.0.1", self.port))
        if self.ca is None:
            return raw
        return tls_context(self.ca).wrap_socket(raw, server_hostname="localhost")

    def _run(self, source: str) -> None:
        try:
            conn = self._connect(source)
        except OSError:
            with self._lock:
                self.refused += 1
            return
        with self._lock:
            self.opened += 1
        with conn:
            try:
                conn.sendall(self.head)
                with self._lock:
                    self.sent += 1
                conn.settimeout(0.01)
                while not self._stop.wait(self.interval):
                    conn.sendall(b"x")
                    with contextlib.suppress(TimeoutError, ssl.SSLWantReadError):
                        answer = conn.recv(4096)
                        with self._lock:
                            self.answered.append(answer)
                        return
            except OSError:
                return

    def start(self) -> Trickle:
        for i in range(self.count):
            thread = threading.Thread(
                target=self._run, args=(self.sources[i % len(self.sources)],), daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


@contextlib.contextmanager
def trickling(
    port: int,
    head: bytes,
    *,
    count: int,
    sources: Sequence[str],
    ca: Path | None = None,
    interval: float = 1.0,
    settle: float = 3.0,
) -> Iterator[Trickle]:
    """Start the trickle, give its connections up to `settle` seconds to open and send their
    heads (and the server half a second to take them in), yield, stop."""
    trickle = Trickle(port, head, count, sources, ca, interval).start()
    try:
        deadline = time.monotonic() + settle
        while trickle.sent + trickle.refused < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        yield trickle
    finally:
        trickle.stop()


@contextlib.contextmanager
def partial_heads(
    port: int, count: int, head: bytes = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
) -> Iterator[list[socket.socket]]:
    """`count` plain connections that send the start of a request head and nothing more."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(head)
            sockets.append(s)
        yield sockets
    finally:
        for s in sockets:
            s.close()


def loopback_sources(count: int) -> list[str]:
    """127.0.0.2 … : distinct clients as far as nginx knows, and ::1 where the host has it."""
    sources = [f"127.0.0.{i}" for i in range(2, 2 + count)]
    if ipv6_loopback():
        sources.append("::1")
    return sources


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# -- nginx on IPv4 and IPv6 loopback ------------------------------------------------------------


def start_dual_stack_nginx(
    directory: Path, tls: TlsFiles, upstreams: Sequence[str], **overrides: object
) -> Nginx:
    """`edge.start_nginx` with the HTTPS port on 127.0.0.1 and, where the host has it, [::1]
    too (the same port): IPv6 clients for the per-client limits."""
    hosts = ("127.0.0.1", *(("[::1]",) if ipv6_loopback() else ()))
    return start_nginx(directory, tls, upstreams, https_hosts=hosts, **overrides)


# -- gunicorn with short deadlines ----------------------------------------------------------------


class QuickDeadlineWorker(DeadlineThreadWorker):
    """The app port's worker with deadlines short enough for a test to wait them out:
    `gunicorn -k tests.support.slow_clients.QuickDeadlineWorker`."""

    head_timeout_s = 1.5
    request_read_timeout_s = 3.0
