"""Prometheus metrics of the instance, served at `/metrics` to allowed networks only.

Under gunicorn, prometheus-client's multiprocess mode: the master gives the workers a fresh
directory on tmpfs (`PROMETHEUS_MULTIPROC_DIR`, gunicorn.conf.py), each worker's values live in
memory-mapped files there, and whichever worker answers a scrape reads them all, so one scrape
is the whole instance. Gauges are set from each worker's values once a second (`refresh`) and
summed or maxed over the live workers. Without that directory (tests, embedding) each app
counts in its own registry. See docs/deployment.md, "Operations".

Requests are counted around the WSGI app (`RequestCounter`), not in Flask's hooks: a failing
hook's 500 is counted, and so is a client that left before its answer (`client_closed`).
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map
from werkzeug.routing.exceptions import RequestRedirect

log = logging.getLogger("m2fp.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# The status label of a request whose client was gone before its answer went out.
CLIENT_CLOSED = "client_closed"
UNMATCHED = "<unmatched>"
REFRESH_SECONDS = 1.0  # how often each worker writes its gauges in multiprocess mode


def multiprocess_mode() -> bool:
    """True when metric values go to PROMETHEUS_MULTIPROC_DIR: decided by prometheus-client
    when it is first imported, so asked of it rather than of the environment."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        self.registry = CollectorRegistry()
        r = self.registry
        if not self.multiprocess:
            # process_resident_memory_bytes, cpu, open fds... of this one process: under
            # gunicorn that would be whichever worker answered, so only without it.
            ProcessCollector(registry=r)
        self._gauges: list[tuple[Gauge, Callable[[], float]]] = []
        self._accepting = False  # taking connections (workers_ready counts only those)
        self._refresher: threading.Thread | None = None
        self.requests = Counter(
            "m2fp_http_requests",
            "HTTP requests by route, method and status.",
            ("route", "method", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "m2fp_http_request_duration_seconds",
            "Time from the request reaching the app to its response written, by route.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "m2fp_stage_duration_seconds",
            "Time per parse stage: decode (validation + decode), resize, queue (waiting for"
            " the batch thread), inference (the batch's forward and post-processing),"
            " render (overlay/JSON encoding).",
            ("stage",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejections = Counter(
            "m2fp_rejections",
            "Requests answered with an error, by error code.",
            ("reason",),
            registry=r,
        )
        self.bans = Counter(
            "m2fp_bans",
            "Temporary bans given (a client's M2FP_BAN_AFTER-th invalid upload in its window).",
            registry=r,
        )
        self.worker_starts = Counter(
            "m2fp_worker_starts",
            "Worker processes started (apps created): beyond the instance's workers, restarts"
            " after a crash, a SIGKILL or a timeout.",
            registry=r,
        )
        self.batch_size = Histogram(
            "m2fp_batch_size",
            "Images per model forward.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "m2fp_batch_duration_seconds",
            "Time per batch in the engine (forward + post-processing): the inference stage.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "m2fp_queue_depth",
            "Images waiting in the engine queues of the instance's workers.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_ready = Gauge(
            "m2fp_model_ready",
            "1 when a worker has its model loaded and warmed up.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.workers = Gauge(
            "m2fp_workers",
            "Worker processes of the instance taking connections.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.workers_ready = Gauge(
            "m2fp_workers_ready",
            "Workers whose /readyz answers 200 (model ready, memory below the shedding"
            " threshold, rate-limit storage reachable).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.memory_ratio = Gauge(
            "m2fp_memory_usage_ratio",
            "The service's memory in use over its memory limit (parses are shed above"
            " M2FP_MEMORY_SHED_FRACTION).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.ratelimit_storage_up = Gauge(
            "m2fp_ratelimit_storage_up",
            "1 while the rate-limit storage answers, 0 from a failed use until the next"
            " successful one (protected requests are refused meanwhile).",
            registry=r,
            multiprocess_mode="livemin",
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        """The engine's `on_batch` hook (called from its batch thread)."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def bind(
        self,
        *,
        queue_depth: Callable[[], float],
        model_ready: Callable[[], float],
        memory_ratio: Callable[[], float],
        worker_ready: Callable[[], float],
    ) -> None:
        """Where the gauges come from: set at each scrape, and once a second by a thread of
        each worker in multiprocess mode (a scrape is answered by one worker only). Under
        gunicorn a worker counts in `m2fp_workers` once it takes connections (`accepting`,
        from its post_worker_init hook); otherwise from here. Called once per app, that is
        once per worker: the worker's start is counted here, before its model loads, so a
        worker that dies while loading still counts."""
        self.worker_starts.inc()
        self._gauges = [
            (self.queue_depth, queue_depth),
            (self.model_ready, model_ready),
            (self.memory_ratio, memory_ratio),
            # a worker not yet taking connections answers no /readyz on the port: not ready
            (self.workers_ready, lambda: worker_ready() if self._accepting else 0.0),
        ]
        if not self.multiprocess:
            self.accepting()
        if self.multiprocess and self._refresher is None:
            self._refresher = threading.Thread(
                target=self._refresh_forever, name="m2fp-metrics", daemon=True
            )
            self._refresher.start()

    def accepting(self) -> None:
        self._accepting = True
        self.workers.set(1)

    def instance_value(self, name: str) -> float:
        """A gauge of the whole instance as a scrape would show it (this worker's own value
        outside multiprocess mode)."""
        registry = self.registry
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        return registry.get_sample_value(name) or 0.0

    def refresh(self) -> None:
        for gauge, read in self._gauges:
            gauge.set(read())

    def _refresh_forever(self) -> None:
        while True:
            time.sleep(REFRESH_SECONDS)
            try:
                self.refresh()
            except Exception as exc:  # a gauge's source failed: say so, keep the others going
                log.warning("metrics: a gauge could not be read: %s: %s", type(exc).__name__, exc)

    def exposition(self) -> bytes:
        self.refresh()
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def count_request(self, route: str, method: str, status: str, seconds: float) -> None:
        self.requests.labels(route, method, status).inc()
        self.latency.labels(route).observe(seconds)


class RequestCounter:
    """WSGI middleware: counts each request in `m2fp_http_requests_total` and its latency
    once its response is over, with the status that went out, `500` when the app raised,
    or `client_closed` when the client was gone before the answer (its connection closed
    when the first chunk was due, or the server stopped writing before the end)."""

    def __init__(self, wsgi_app: Any, url_map: Map, metrics: ServiceMetrics) -> None:
        self.wsgi_app = wsgi_app
        self.url_map = url_map
        self.metrics = metrics

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        route, method = self._route(environ), environ.get("REQUEST_METHOD", "")
        status: list[str] = []

        def start(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[:] = [line.split(" ", 1)[0]]
            return start_response(line, headers, exc_info)

        try:
            body = self.wsgi_app(environ, start)
        except BaseException:
            self.metrics.count_request(route, method, "500", time.perf_counter() - started)
            raise

        def done(delivered: bool) -> None:
            outcome = (status[0] if status else "500") if delivered else CLIENT_CLOSED
            self.metrics.count_request(route, method, outcome, time.perf_counter() - started)

        return _CountedBody(body, environ.get("gunicorn.socket"), done)

    def _route(self, environ: dict[str, Any]) -> str:
        """The matched rule (`/api/v1/parse`), or one label for every path a client makes up."""
        try:
            rule, _ = self.url_map.bind_to_environ(environ).match(return_rule=True)
        except (HTTPException, RequestRedirect):
            return UNMATCHED
        return rule.rule


class _CountedBody:
    """The response body, passed through one chunk ahead, so that the request is counted
    before its last chunk goes out (a client that has its answer finds it in the metrics).
    Delivered unless the client had closed its connection when the first chunk was due, or
    the server stops asking for chunks before the last one (`close` first: a broken write)."""

    def __init__(
        self, body: Iterable[bytes], sock: socket.socket | None, done: Callable[[bool], None]
    ) -> None:
        self._body = body
        self._sock = sock
        self._done = done
        self._reported = False

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._body)
        current = next(chunks, None)
        gone = _peer_closed(self._sock)  # before the first byte: a client that left
        while current is not None:
            following = next(chunks, None)
            if following is None:
                self._report(delivered=not gone)
            yield current
            current = following
        self._report(delivered=not gone)  # an empty body

    def _report(self, *, delivered: bool) -> None:
        if not self._reported:
            self._reported = True
            self._done(delivered)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._report(delivered=False)  # no-op once counted


def _peer_closed(sock: socket.socket | None) -> bool:
    """True when the other end of `sock` has closed or reset the connection. Unread request
    bytes (a pipelined request, a body the app refused to read) mean it is still there."""
    if sock is None or isinstance(sock, ssl.SSLSocket):
        return False
    try:
        poller = select.poll()  # not select(): descriptors above 1023 are fine
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (ConnectionError, TimeoutError):
        return True
    except (OSError, ValueError):  # not a socket we can ask (closed, another kind)
        return False


class NetworkAllowList:
    """Addresses allowed to read /metrics (M2FP_METRICS_ALLOW)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def allows(self, address: str | None) -> bool:
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)


__all__ = [
    "CLIENT_CLOSED",
    "NetworkAllowList",
    "RequestCounter",
    "ServiceMetrics",
    "multiprocess_mode",
]
