"""Operations endpoints: `/healthz` (alive), `/readyz` (able to parse), `/metrics`.

Readiness of an instance (a gunicorn master and its workers on one port): it is ready when at
least one worker is ready. /readyz is answered by whichever worker takes the connection, about
itself; `hold_until_ready` (gunicorn's post_worker_init) keeps a worker whose model is still
loading from taking connections while another worker of the instance takes them, so a worker
that restarts does not make the port's answers alternate. `m2fp_workers` and
`m2fp_workers_ready` count them. docs/deployment.md, "Operations".
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Blueprint, Flask, Response, current_app, jsonify, request

import lifecycle
from security.errors import Draining, Forbidden, NotReady, Overloaded, ServiceError, Unavailable
from web.runtime import FAILED, LOADING
from web.service import RETRY_NOT_READY, RETRY_OVERLOADED

HOLD_POLL_S = 0.25

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
    problem = not_ready(current_app)
    if problem is not None:
        raise problem
    return jsonify({"status": "ready"})


def not_ready(app: Flask) -> ServiceError | None:
    """Why this worker's /readyz answers 503, or None when it answers 200."""
    drain = app.extensions.get(lifecycle.EXTENSION)
    if drain is not None and drain.draining:
        return Draining(retry_after=Draining.kind.retry_after)
    service = app.extensions["m2fp_service"]
    if service.runtime.state == FAILED:
        return NotReady("The model is not available.", retry_after=RETRY_NOT_READY)
    if not service.runtime.ready:
        return NotReady(retry_after=RETRY_NOT_READY)
    if service.memory.shedding:
        return Overloaded(
            "The server is low on memory; try again shortly.", retry_after=RETRY_OVERLOADED
        )
    if not app.extensions["m2fp_abuse"].storage_reachable():
        # the same answer (and log line, once per outage) as a parse gets (web/errors.py)
        return Unavailable(retry_after=Unavailable.kind.retry_after)
    return None


def hold_until_ready(
    app: Flask,
    *,
    notify: Callable[[], None],
    alive: Callable[[], bool],
    others: Callable[[], float] | None = None,
) -> str:
    """Before a gunicorn worker takes connections: while its model loads and `others` (the
    instance's other workers taking connections; `m2fp_workers` by default) is at least one,
    wait, calling `notify` (the worker's heartbeat to the master). Returns the model's state
    when it stops waiting: `ready`, `failed` (it then takes connections and answers 503,
    with the reason in the operator log) or `loading` (no other worker, or told to stop)."""
    service = app.extensions["m2fp_service"]

    def accepting_elsewhere() -> float:
        if others is not None:
            return others()
        return service.metrics.instance_value("m2fp_workers")

    while alive() and service.runtime.state == LOADING and accepting_elsewhere() >= 1:
        notify()
        time.sleep(HOLD_POLL_S)
    service.metrics.accepting()
    return service.runtime.state


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


__all__ = ["bp", "hold_until_ready", "not_ready"]
