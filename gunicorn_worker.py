"""gunicorn's gthread worker with deadlines for reading requests, and its own errors in the API's
form: `worker_class = "gunicorn_worker.DeadlineThreadWorker"` (gunicorn.conf.py).

Stock gthread hands a connection to a thread as soon as its first byte arrives, and the thread
then blocks until the request head is complete, with no time limit: thirty connections that
sent half a head held every thread, `/healthz` included, for as long as they stayed open. Here:

- The main loop reads request heads itself, without blocking; a connection goes to a thread
  only once its head is complete (or larger than `HEAD_BUFFER_BYTES`: the parser then takes
  the rest, under the deadline below). A head not complete `HEAD_TIMEOUT_S` after the
  connection was accepted (or, kept alive, became readable) is closed without an answer.
- In the thread, every read of one request shares one deadline, `REQUEST_READ_TIMEOUT_S`
  after the request reached the thread: a head that came in behind the previous request on a
  kept-alive connection, and the body however slowly it trickles. A read past it fails as a
  client disconnection (`ReadDeadlineExceeded`, a `NoMoreData`).
- A connection that is done is closed by its thread (gunicorn lingers up to 2 s draining what
  the client still sends), not by the main loop, which a client that kept sending would stall.
- gunicorn's own refusals (a malformed request line or header, a bad chunk) answer JSON in
  the API's error shape with the app's security headers (and nginx's request id, when the
  refused head carries one), where stock gunicorn sends HTML that quotes the request line;
  the log line names the kind of error and never its text, which quotes the request.

Behind nginx none of this is visible: nginx sends whole, valid requests at once. It matters
where the app's port is reachable by others (a shared host, a cluster network).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import selectors
import socket
import threading
import time
import uuid
from collections import deque
from functools import partial
from http import HTTPStatus

from gunicorn import glogging, util
from gunicorn.http import errors as http_errors
from gunicorn.workers import gthread

from http_contract import generic_error

HEAD_TIMEOUT_S = 10.0
REQUEST_READ_TIMEOUT_S = 60.0
# The main loop holds at most this much of a head; gunicorn's own limits (limit_request_line,
# limit_request_fields × limit_request_field_size) still apply to the whole of it.
HEAD_BUFFER_BYTES = 64 * 1024

# gunicorn's refusals by status (the rest of its ParseExceptions are 400s).
_STATUS = {
    http_errors.LimitRequestLine: 414,
    http_errors.LimitRequestHeaders: 431,
    http_errors.UnsupportedTransferCoding: 501,
    http_errors.ForbiddenProxyRequest: 403,
    http_errors.ConfigurationProblem: 500,
    # a header the app tried to send: the app's fault
    http_errors.InvalidResponseHeader: 500,
    http_errors.InvalidResponseHeaderName: 500,
}


class ReadDeadlineExceeded(http_errors.NoMoreData):
    """A request did not arrive in time; gthread closes the connection, as for a client that
    went away."""

    def __str__(self) -> str:
        return "the request did not arrive in time"


class _DeadlineSocket:
    """The socket as the request parser reads it: every `recv` ends by `deadline` (a
    `time.monotonic()` value, or None for no limit). Everything else is the socket's own."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline: float | None = None

    def recv(self, size: int) -> bytes:
        if self.deadline is None:
            return self._sock.recv(size)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ReadDeadlineExceeded()
        prior = self._sock.gettimeout()  # a caller's own bound (gunicorn's body drain)
        self._sock.settimeout(remaining if prior is None else min(prior, remaining))
        try:
            return self._sock.recv(size)
        except TimeoutError:
            if prior is not None and prior < remaining:
                raise
            raise ReadDeadlineExceeded() from None
        finally:
            self._sock.settimeout(prior)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._sock, name)


def head_complete(data: bytes | bytearray) -> bool:
    """Whether `data` holds a whole request head (or more than the main loop keeps)."""
    return b"\r\n\r\n" in data or b"\n\n" in data or len(data) >= HEAD_BUFFER_BYTES


def error_status(exc: BaseException) -> int:
    """The status of gunicorn's answer to `exc`: what stock gunicorn sends, except 417 (400
    here: the error list has no 417)."""
    for cls, status in _STATUS.items():
        if isinstance(exc, cls):
            return status
    return 400 if isinstance(exc, http_errors.ParseException) else 500


# nginx's request id ($request_id: 32 hexadecimal digits), found in a head gunicorn refused.
_REQUEST_ID = re.compile(rb"\r\nx-request-id:[ \t]*([0-9a-f]{32})[ \t]*\r\n", re.IGNORECASE)


def request_id_in(head: bytes | None) -> str | None:
    """The X-Request-ID nginx set, when `head` carries one in nginx's form: the error then
    joins nginx's access log line. Nothing else of the head is used."""
    match = _REQUEST_ID.search(head or b"")
    return match.group(1).decode().lower() if match else None


def error_response(status: int, request_id: str | None = None) -> bytes:
    """The bytes of a JSON error for `status` with the app's headers for a JSON response;
    nothing of the request in it but `request_id` (a fresh one when None)."""
    from security.headers import security_headers  # Flask: in the worker only, not the master

    kind = generic_error(status) or generic_error(500)
    assert kind is not None
    request_id = request_id or uuid.uuid4().hex
    error = {"code": kind.code, "message": kind.message, "request_id": request_id}
    body = json.dumps({"error": error}, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Connection": "close",
        "X-Request-ID": request_id,
        **security_headers("/api/", "application/json"),
    }
    head = f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (head + "\r\n").encode("latin-1") + body


class DeadlineThreadWorker(gthread.ThreadWorker):
    """gthread with request heads read by the main loop and a read deadline per request."""

    head_timeout_s = HEAD_TIMEOUT_S
    request_read_timeout_s = REQUEST_READ_TIMEOUT_S

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.reading_heads: deque[gthread.TConn] = deque()  # by deadline: one timeout for all
        self._thread = threading.local()  # the head its thread is serving, for handle_error

    def _reads_heads(self) -> bool:
        # TLS and HTTP/2 prior knowledge read from the socket in TConn.init: stock behaviour.
        return not self.cfg.is_ssl and self.cfg.http2_cleartext not in ("prior-knowledge", "both")

    def accept(self, listener) -> None:  # noqa: ANN001
        if not self._reads_heads():
            return super().accept(listener)
        try:
            sock, client = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return None
        self.nr_conns += 1
        conn = gthread.TConn(self.cfg, sock, client, listener.getsockname())  # non-blocking
        self._read_head(conn)
        return None

    def on_client_socket_readable(self, conn, client) -> None:  # noqa: ANN001
        if not self._reads_heads():
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_head(conn)
        return None

    def _read_head(self, conn: gthread.TConn) -> None:
        conn.head = bytearray()
        conn.timeout = time.monotonic() + self.head_timeout_s
        self.reading_heads.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_readable, conn))

    def _on_head_readable(self, conn: gthread.TConn, client) -> None:  # noqa: ANN001
        try:
            data = conn.sock.recv(HEAD_BUFFER_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.head += data
        if data and not head_complete(conn.head):
            return
        self.poller.unregister(conn.sock)
        self.reading_heads.remove(conn)
        if not data:  # the client went away
            self.nr_conns -= 1
            conn.close()
            return
        conn.data_ready = True
        self.enqueue_req(conn)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        while self.reading_heads and self.reading_heads[0].timeout <= now:
            conn = self.reading_heads.popleft()
            with contextlib.suppress(OSError, KeyError, ValueError):  # already unregistered
                self.poller.unregister(conn.sock)
            self.nr_conns -= 1
            conn.close()

    def handle(self, conn: gthread.TConn):  # noqa: ANN201
        head = getattr(conn, "head", None)
        self._thread.head = None if head is None else bytes(head)
        if head is not None:
            conn.head = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(head))
        if conn.parser is not None and not conn.is_http2:
            unreader = conn.parser.unreader
            if not isinstance(unreader.sock, _DeadlineSocket):
                unreader.sock = _DeadlineSocket(unreader.sock)
            unreader.sock.deadline = time.monotonic() + self.request_read_timeout_s
        result = super().handle(conn)
        if not result:
            # Closed here, in this thread: stock gthread closes on its main loop, lingering up
            # to 2 s to drain what the client still sends, and a client that keeps sending
            # stalls every other connection for those 2 s.
            conn.close(graceful=True)
            conn.closed_by_thread = True
        return result

    def finish_request(self, conn: gthread.TConn, fs) -> None:  # noqa: ANN001
        if getattr(conn, "closed_by_thread", False):
            self.nr_conns -= 1
            return
        super().finish_request(conn, fs)

    def handle_error(self, req, client, addr, exc) -> None:  # noqa: ANN001
        status = error_status(exc)
        if status == 500:
            # The traceback, never the request line (stock gunicorn logs the URI, query and all).
            self.log.exception("Error handling request")
        else:
            # The exception's text quotes the request line or header: its kind only.
            peer = addr[0] if addr else "unix socket"
            self.log.warning("Invalid request from %s: %s", peer, type(exc).__name__)
        request_id = request_id_in(getattr(self._thread, "head", None))
        try:
            util.write_nonblock(client, error_response(status, request_id))
        except Exception:  # noqa: BLE001 - the client may be gone; nothing more to do
            self.log.debug("Failed to send error message.")


class RequestDataFilter(logging.Filter):
    """gunicorn's own log lines without request data, whatever the level: an exception passed
    as an argument (gunicorn's "Closing connection. %s", "Ignored premature client
    disconnection. %s": their text quotes the bytes read) is logged as its class name; the
    request line of stock gunicorn's "Error handling request %s %s" and "Invalid request from
    ip=...: <error>" is dropped. The worker above logs none of these itself; this covers
    gunicorn's other paths."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Error handling request") and record.args:
            record.msg, record.args = "Error handling request", ()
        elif message.startswith("Invalid request from ip="):
            record.msg, record.args = message.partition(": ")[0], ()
        elif isinstance(record.args, tuple) and any(
            isinstance(arg, BaseException) for arg in record.args
        ):
            record.args = tuple(
                type(arg).__name__ if isinstance(arg, BaseException) else arg for arg in record.args
            )
        return True


class RedactingLogger(glogging.Logger):
    """gunicorn's logger with `RequestDataFilter` on its error log: `logger_class =
    "gunicorn_worker.RedactingLogger"` (gunicorn.conf.py). Its access log stays off: the app's
    audit line replaces it."""

    def setup(self, cfg) -> None:  # noqa: ANN001
        super().setup(cfg)
        if not any(isinstance(f, RequestDataFilter) for f in self.error_log.filters):
            self.error_log.addFilter(RequestDataFilter())


__all__ = [
    "HEAD_TIMEOUT_S",
    "REQUEST_READ_TIMEOUT_S",
    "DeadlineThreadWorker",
    "ReadDeadlineExceeded",
    "RedactingLogger",
    "RequestDataFilter",
    "error_response",
    "error_status",
    "head_complete",
]
