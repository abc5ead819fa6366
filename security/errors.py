"""Failures the service reports to clients, one exception type per cause.

Each carries its HTTP status, a stable machine-readable `code` and a human message, taken from
the one error list (`http_contract.ERRORS`, which nginx's own error pages use too). The single
error handler in `web/errors.py` turns them (and werkzeug's `HTTPException`s) into the JSON error
shape of the API contract: `{"error": {"code", "message", "request_id"}}`.
"""

from __future__ import annotations

from http_contract import ErrorKind, error_kind


class ServiceError(Exception):
    kind: ErrorKind = error_kind("internal_error")
    status: int = kind.status
    code: str = kind.code
    message: str = kind.message

    def __init_subclass__(cls, code: str = "", **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code:
            cls.kind = error_kind(code)
            cls.status, cls.code, cls.message = cls.kind.status, cls.kind.code, cls.kind.message

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.retry_after = retry_after


class BadRequest(ServiceError, code="bad_request"):
    pass


class Unauthorized(ServiceError, code="unauthorized"):
    pass


class Forbidden(ServiceError, code="forbidden"):
    pass


class PayloadTooLarge(ServiceError, code="payload_too_large"):
    pass


class UnsupportedMediaType(ServiceError, code="unsupported_media_type"):
    pass


class UnprocessableImage(ServiceError, code="unprocessable_image"):
    pass


class RateLimited(ServiceError, code="rate_limited"):
    pass


class Banned(ServiceError, code="temporarily_banned"):
    pass


class Overloaded(ServiceError, code="overloaded"):
    pass


class NotReady(ServiceError, code="not_ready"):
    pass


class Draining(ServiceError, code="draining"):
    """`/readyz` while the worker drains before stopping (lifecycle.py)."""


class Unavailable(ServiceError, code="unavailable"):
    """Something the service needs is down (the rate-limit storage): it refuses to serve
    rather than serve without limits."""
