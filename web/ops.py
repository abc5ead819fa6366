"""Operations endpoints: `/healthz` (alive), `/readyz` (able to parse), `/metrics`."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

import lifecycle
from security.errors import Draining, Forbidden, NotReady, Overloaded, Unavailable
from web.runtime import FAILED
from web.service import RETRY_NOT_READY, RETRY_OVERLOADED

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """200 when a parse would be accepted now: not draining before a stop, model loaded and
    warmed up, memory below the shedding threshold, rate-limit storage reachable. A 503's
    message names the check that failed, never its details (why a model failed to load is in
    the operator log)."""
    drain = current_app.extensions.get(lifecycle.EXTENSION)
    if drain is not None and drain.draining:
        raise Draining(retry_after=Draining.kind.retry_after)
    service = current_app.extensions["m2fp_service"]
    if service.runtime.state == FAILED:
        raise NotReady("The model is not available.", retry_after=RETRY_NOT_READY)
    if not service.runtime.ready:
        raise NotReady(retry_after=RETRY_NOT_READY)
    if service.memory.shedding:
        raise Overloaded(
            "The server is low on memory; try again shortly.", retry_after=RETRY_OVERLOADED
        )
    abuse = current_app.extensions["m2fp_abuse"]
    if not abuse.storage_reachable():
        # the same answer (and log line, once per outage) as a parse gets (web/errors.py)
        raise Unavailable(retry_after=Unavailable.kind.retry_after)
    return jsonify({"status": "ready"})


@bp.get("/metrics")
def metrics() -> Response:
    allow = current_app.extensions["m2fp_metrics_allow"]
    settings = current_app.extensions["m2fp_settings"]
    # Forwarded by a proxy we do not trust (nginx in front, M2FP_TRUSTED_PROXIES=0): the peer
    # is the proxy, the real client unknown. Refuse rather than let the world in via nginx.
    forwarded = "X-Forwarded-For" in request.headers and not settings.trusted_proxies
    if forwarded or not allow.allows(request.remote_addr):
        raise Forbidden("Metrics are not available from this address.")
    service = current_app.extensions["m2fp_service"]
    return Response(service.metrics.exposition(), content_type=service.metrics.content_type)


__all__ = ["bp"]
