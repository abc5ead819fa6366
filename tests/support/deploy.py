"""Helpers for the deployment tests: real nginx (Debian's binary) rendered from nginx/, dev
certificates from scripts/dev-cert, a small echoing upstream, and a filesystem watch.

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
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from inotify_simple import INotify, flags

from nginx.render import TEMP_SUBDIRS, NginxOptions, security_headers, write_config
from tests.support.paths import REPO

NGINX = "/usr/sbin/nginx"
FATRACE = "/usr/sbin/fatrace"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (bind port 0, read it, close)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, *, timeout: float = 15.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


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
    **overrides: object,
) -> Nginx:
    """Render a config into `directory` with free ports and start nginx in the foreground.
    The runtime directory (pid, temp paths) is `directory/run`; logs are files beside it."""
    https_port, http_port = free_port(), free_port()
    error_log, access_log = directory / "error.log", directory / "access.log"
    options = NginxOptions(
        runtime_dir=directory / "run",
        cert=tls.cert,
        key=tls.key,
        https_listen=(f"127.0.0.1:{https_port}",),
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


# -- filesystem watch ---------------------------------------------------------------------------


@dataclass
class DiskWatch:
    """fatrace (fanotify: every mounted filesystem, with the writing process id) running while
    requests are served. `writes(pids)` lists the files those processes created or wrote.
    Beside it, inotify on chosen directories (nginx's temp paths): `dir_events` lists anything
    created, written, moved or deleted there, whoever did it."""

    log: Path
    proc: subprocess.Popen | None = None
    events: list[tuple[str, int, str, str]] = field(default_factory=list)
    inotify: INotify | None = None
    watched: dict[int, Path] = field(default_factory=dict)
    dir_events: list[str] = field(default_factory=list)

    def watch_dirs(self, directories: Iterable[Path]) -> None:
        self.inotify = INotify()
        mask = (
            flags.CREATE
            | flags.MODIFY
            | flags.CLOSE_WRITE
            | flags.MOVED_TO
            | flags.DELETE
            | flags.OPEN
        )
        for directory in directories:
            self.watched[self.inotify.add_watch(str(directory), mask)] = Path(directory)

    def start(self, marker_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [FATRACE, "-o", str(self.log)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        # fatrace says nothing when it is ready: write a marker until it shows up.
        marker = marker_dir / f"fatrace-ready-{os.getpid()}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            marker.write_text("ready")
            time.sleep(0.1)
            if self.log.exists() and marker.name in self.log.read_text(errors="replace"):
                marker.unlink()
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"fatrace failed: {self.proc.stderr.read().decode()}")
        raise TimeoutError("fatrace did not report a marker write within 15 s")

    def stop(self) -> list[tuple[str, int, str, str]]:
        if self.proc is not None and self.proc.poll() is None:
            time.sleep(0.3)  # let the last events arrive
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(10)
        if self.inotify is not None:
            for event in self.inotify.read(timeout=0):
                kinds = ",".join(str(f.name) for f in flags.from_mask(event.mask))
                self.dir_events.append(f"{self.watched[event.wd] / event.name}: {kinds}")
            self.inotify.close()
        pattern = re.compile(r"^(.*)\((\d+)\): (\S+) +(.*)$")
        self.events = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = pattern.match(line)
            if m:
                self.events.append((m.group(1), int(m.group(2)), m.group(3), m.group(4)))
        return self.events

    def writes(self, pids: set[int], allowed: Iterable[Path] = ()) -> list[str]:
        """Events by `pids` that create, write or move a file, except on the `allowed` files
        (the logs). Read-only opens are not listed."""
        allowed_names = {str(p) for p in allowed}
        found = []
        for comm, pid, kinds, path in self.events:
            if pid not in pids or not set(kinds) & set("W+>"):
                continue
            if path in allowed_names:
                continue
            found.append(f"{comm}({pid}): {kinds} {path}")
        return found


@contextlib.contextmanager
def disk_watch(directory: Path, inotify_dirs: Iterable[Path] = ()) -> Iterator[DiskWatch]:
    watch = DiskWatch(directory / "fatrace.log")
    watch.watch_dirs(inotify_dirs)
    watch.start(directory)
    try:
        yield watch
    finally:
        watch.stop()


# -- gunicorn + the app -------------------------------------------------------------------------


@dataclass
class AppServer:
    """`gunicorn -c gunicorn.conf.py 'app:create_app()'` on 127.0.0.1, stdout (the audit log)
    and stderr kept in files."""

    proc: subprocess.Popen
    port: int
    stdout: Path
    stderr: Path

    def pids(self) -> set[int]:
        """The master and its workers."""
        pids = {self.proc.pid}
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in children.read_text().split()}
        return pids

    def audit(self) -> list[dict]:
        """The audit log lines so far."""
        lines = self.stdout.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_app(
    directory: Path, model_dir: Path, env: dict[str, str], wrapper: Sequence[str] = ()
) -> AppServer:
    """Start gunicorn with the app on a free port (inside `wrapper`, e.g. bubblewrap); return
    once /readyz answers 200."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("M2FP_")}
    full_env.update({"M2FP_MODEL_DIR": str(model_dir), "OMP_NUM_THREADS": "1", **env})
    stdout, stderr = directory / "app.out", directory / "app.err"
    proc = subprocess.Popen(
        [*wrapper, str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py"]
        + ["-b", f"127.0.0.1:{port}", "--threads", "4", "app:create_app()"],
        cwd=REPO,
        env=full_env,
        stdout=stdout.open("wb"),
        stderr=stderr.open("wb"),
    )
    server = AppServer(proc, port, stdout, stderr)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{stderr.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.sendall(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            if s.recv(64).split(b"\r\n")[0].endswith(b" 200 OK"):
                return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"gunicorn not ready in 120 s:\n{stderr.read_text()[-3000:]}")
