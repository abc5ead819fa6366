"""Prometheus metrics of one worker process, served at `/metrics` to allowed networks only.

Each app has its own registry. Under gunicorn every worker process counts for itself (no
multiprocess mode: that writes metric files for every request); the supported layout is one
worker per gunicorn instance (one model per process), each instance scraped on its own port.
See docs/api.md, "Metrics".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu, open fds...
        self.requests = Counter(
            "m2fp_http_requests",
            "HTTP requests by route, method and status.",
            ("route", "method", "status"),
            registry=r,
        )
        self.latency = Histogram(
            "m2fp_http_request_duration_seconds",
            "Time from the first hook to the response, by route.",
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
            "m2fp_queue_depth", "Images waiting in the engine queue.", registry=r
        )
        self.model_ready = Gauge(
            "m2fp_model_ready", "1 when the model is loaded and warmed up.", registry=r
        )
        self.memory_ratio = Gauge(
            "m2fp_memory_usage_ratio",
            "Memory in use over the memory limit (parses are shed above"
            " M2FP_MEMORY_SHED_FRACTION).",
            registry=r,
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
    ) -> None:
        """Gauges read at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.model_ready.set_function(model_ready)
        self.memory_ratio.set_function(memory_ratio)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


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


__all__ = ["NetworkAllowList", "ServiceMetrics"]
