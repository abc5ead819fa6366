"""The one place where failures become the JSON error of the API contract.

`{"error": {"code": ..., "message": ..., "request_id": ...}}` for every 4xx and 5xx: the
service's own `ServiceError`s, werkzeug's `HTTPException`s (404, 405, 413 from
`MAX_CONTENT_LENGTH`, 429 from flask-limiter...) and anything unexpected, which becomes a 500
carrying only the request id while the traceback goes to the operator log (stderr).
"""

from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify
from flask.wrappers import Response
from limits.errors import StorageError
from werkzeug.exceptions import HTTPException

from http_contract import ERRORS
from security.errors import ServiceError, Unavailable
from web.request_record import current_record

log = logging.getLogger("m2fp.service")

# Stable codes for werkzeug's errors (the generic kind of each status in the one error list);
# anything else is named after its status.
_HTTP_CODES: dict[int, tuple[str, str]] = {
    kind.status: (kind.code, kind.message) for kind in ERRORS if kind.generic
}


def error_response(
    status: int, code: str, message: str, *, retry_after: int | None = None
) -> Response:
    """The JSON error response; the request record keeps the code for the audit log and the
    metrics, and the Retry-After for the abuse gate."""
    record = current_record()
    record.error_code = code
    error = {"code": code, "message": message, "request_id": record.request_id}
    response = jsonify({"error": error})
    response.status_code = status
    if retry_after is not None:
        record.retry_after = max(1, int(retry_after))
        response.headers["Retry-After"] = str(record.retry_after)
    return response


def _service_error(exc: ServiceError) -> Response:
    response = error_response(exc.status, exc.code, exc.message, retry_after=exc.retry_after)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code, message = _HTTP_CODES.get(status, (f"http_{status}", "The request failed."))
    response = error_response(status, code, message)
    # Keep what werkzeug meant to send (Allow on 405, Retry-After...), but not its HTML.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def storage_unavailable(exc: StorageError) -> Response:
    """Rate limits and bans cannot be checked: refuse (fail closed) rather than serve
    unlimited. The operator hears of it once per outage (`security.abuse.StorageHealth`), not
    once per request."""
    current_app.extensions["m2fp_abuse"].health.failed(exc.storage_error)
    return _service_error(Unavailable(retry_after=Unavailable.kind.retry_after))


def _unexpected(exc: Exception) -> Response:
    # The traceback (no local variables) goes to the operator log; the client sees the id only.
    log.error("unhandled error in request %s", current_record().request_id, exc_info=exc)
    return error_response(500, "internal_error", _HTTP_CODES[500][1])


def init_app(app: Flask) -> None:
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(StorageError, storage_unavailable)
    app.register_error_handler(Exception, _unexpected)


__all__ = ["error_response", "init_app", "storage_unavailable"]
