"""`GET /api/v1/queue`: how long a parse would wait now, for the pages' progress card.

A snapshot of the engine's queue (`InferenceEngine.stats`): images waiting and running, the
batch size, the measured seconds per image and the expected wait of a parse sent now; and the
parse requests this worker is handling (from their arrival, upload and decode included, to
their answer). It holds no per-request data and stores nothing; it is outside the rate limit
(only the parse is limited: web/__init__.py's PROTECTED_ENDPOINTS) and costs two locks, so a
page may poll it every second or two while its own parse is in flight.
"""

from __future__ import annotations

import threading

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState

from web.request_record import current_record

bp = Blueprint("queue", __name__, url_prefix="/api/v1")

PARSE_ENDPOINT = "api.parse"


class InFlight:
    """Parse requests being handled now: counted when the view is reached (before the body is
    read), uncounted when the request ends, however it ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def enter(self) -> None:
        with self._lock:
            self._count += 1

    def leave(self) -> None:
        with self._lock:
            self._count -= 1


@bp.record_once
def _watch_parses(state: BlueprintSetupState) -> None:
    app: Flask = state.app
    parses = app.extensions["m2fp_in_flight"] = InFlight()

    @app.before_request
    def _enter() -> None:
        if request.endpoint == PARSE_ENDPOINT:
            parses.enter()
            current_record().in_flight = True

    @app.teardown_request
    def _leave(_exc: BaseException | None) -> None:
        record = current_record()
        if record.in_flight:
            record.in_flight = False
            parses.leave()


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@bp.get("/queue")
def queue() -> Response:
    service = current_app.extensions["m2fp_service"]
    stats = service.engine.stats()
    return jsonify(
        {
            "ready": service.runtime.ready,
            "in_flight": current_app.extensions["m2fp_in_flight"].count,
            "queued": stats.queued,
            "running": stats.running,
            "capacity": stats.capacity,
            "service_seconds": _seconds(stats.service_seconds),
            "expected_wait_seconds": _seconds(stats.expected_wait_seconds),
        }
    )


__all__ = ["InFlight", "bp"]
