"""The Flask side of the service: blueprints, the error mapping, metrics, the model runtime.

`app.create_app` calls `init_app` once; everything it builds lives in `app.extensions`:
`m2fp` (the engine), `m2fp_service`, `m2fp_settings`, `m2fp_abuse`, `m2fp_metrics_allow`.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, request
from flask.wrappers import Response

from security import audit, headers
from security.client_address import ClientAddressMiddleware, TrustedProxies
from security.uploads import UploadPolicy
from settings import Settings
from web import context, errors, gate, request_record
from web.metrics import NetworkAllowList, RequestCounter, ServiceMetrics
from web.overload import MemoryGuard, default_probe
from web.request_record import current_record
from web.runtime import ModelRuntime, build_engine
from web.service import ParseService

PROTECTED_ENDPOINTS = ("api.parse",)


def configure_logging() -> None:
    """The operator log: records of `m2fp.*` (model, engine, service) and `security.*`
    (weights decryption, abuse control) at INFO and above on stderr. The audit log, on stdout,
    is `security.audit`'s own logger and does not propagate here."""
    for name in ("m2fp", "security"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, audit.CurrentStream) for h in logger.handlers):
            handler = audit.CurrentStream("stderr")
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def init_app(app: Flask, settings: Settings, *, engine: Any = None, model: Any = None) -> None:
    from web import api, ops, pages, queue_status

    configure_logging()
    app.config.from_mapping(context.flask_config(settings))
    # remote_addr is the client (X-Forwarded-For believed only from the trusted proxy
    # networks), normalised, for the gate, the audit log and the /metrics allow list alike.
    app.wsgi_app = ClientAddressMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, TrustedProxies.from_settings(settings)
    )
    context.init_app(app)
    # after_request hooks run in reverse order: the audit line, registered first, comes last.
    request_record.init_app(
        app, audit.AuditLog(client_mode=settings.audit_client, hash_key=settings.audit_hash_key)
    )
    metrics = ServiceMetrics()
    app.wsgi_app = RequestCounter(app.wsgi_app, app.url_map, metrics)  # type: ignore[method-assign]
    _count_rejections(app, metrics)
    headers.init_app(app, cors_origins=settings.cors_origins)
    errors.init_app(app)
    for blueprint in (api.bp, ops.bp, pages.bp, queue_status.bp):
        app.register_blueprint(blueprint)
    abuse = gate.init_app(
        app,
        settings,
        endpoints=PROTECTED_ENDPOINTS,
        on_storage_change=lambda up: metrics.ratelimit_storage_up.set(float(up)),
    )

    limit = int(settings.memory_limit_mb * 1024 * 1024) if settings.memory_limit_mb else None
    if engine is None:
        engine = build_engine(settings, model=model, on_batch=metrics.observe_batch)
    runtime = ModelRuntime(engine)
    service = ParseService(
        runtime=runtime,
        policy=UploadPolicy.from_settings(settings),
        memory=MemoryGuard(settings.memory_shed_fraction, default_probe(limit)),
        metrics=metrics,
        bans=abuse.bans,
        deadline_s=settings.time_limits.engine_deadline_s,
    )
    metrics.bind(
        queue_depth=lambda: engine.queue_depth,
        model_ready=lambda: float(runtime.ready),
        memory_ratio=lambda: service.memory.reading().ratio,
        worker_ready=lambda: float(ops.not_ready(app) is None),
    )
    app.extensions.update(
        m2fp=engine,
        m2fp_service=service,
        m2fp_settings=settings,
        m2fp_metrics_allow=NetworkAllowList(settings.metrics_allow),
    )
    runtime.start()


def _count_rejections(app: Flask, metrics: ServiceMetrics) -> None:
    """Error answers by error code; requests, statuses and latency are counted around the
    WSGI app (`RequestCounter`). The probes' 503s (/readyz) are not refused parses."""

    @app.after_request
    def _count(response: Response) -> Response:
        if response.status_code >= 400 and request.blueprint != "ops":
            error_code = current_record().error_code or f"http_{response.status_code}"
            metrics.rejections.labels(error_code).inc()
        return response


__all__ = ["PROTECTED_ENDPOINTS", "configure_logging", "init_app"]
