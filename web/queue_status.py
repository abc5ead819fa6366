"""`GET /api/v1/queue`: how long a parse would wait now, for the pages' progress card.

A snapshot of the engine's queue (`InferenceEngine.stats`): images waiting and running, the
batch size, the measured seconds per image and the expected wait of a parse sent now. It holds
no per-request data and stores nothing; it is outside the rate limit (only the parse is
limited: web/__init__.py's PROTECTED_ENDPOINTS) and costs one lock, so a page may poll it every
second or two while its own parse is in flight.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("queue", __name__, url_prefix="/api/v1")


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@bp.get("/queue")
def queue() -> Response:
    service = current_app.extensions["m2fp_service"]
    stats = service.engine.stats()
    return jsonify(
        {
            "ready": service.runtime.ready,
            "queued": stats.queued,
            "running": stats.running,
            "capacity": stats.capacity,
            "service_seconds": _seconds(stats.service_seconds),
            "expected_wait_seconds": _seconds(stats.expected_wait_seconds),
        }
    )


__all__ = ["bp"]
