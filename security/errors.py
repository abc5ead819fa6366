"""Failures the service reports to clients, one exception type per cause.

Each carries its HTTP status, a stable machine-readable `code` and a human message. The single
error handler in `web/errors.py` turns them (and werkzeug's `HTTPException`s) into the JSON error
shape of the API contract: `{"error": {"code", "message", "request_id"}}`.
"""

from __future__ import annotations


class ServiceError(Exception):
    status: int = 500
    code: str = "internal_error"
    message: str = "The server could not complete the request."

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.retry_after = retry_after


class BadRequest(ServiceError):
    status, code, message = 400, "bad_request", "The request is malformed."


class Unauthorized(ServiceError):
    status, code, message = 401, "unauthorized", "An API key is required."


class Forbidden(ServiceError):
    status, code, message = 403, "forbidden", "This API key is not valid."


class PayloadTooLarge(ServiceError):
    status, code, message = 413, "payload_too_large", "The upload is too large."


class UnsupportedMediaType(ServiceError):
    status, code, message = (
        415,
        "unsupported_media_type",
        "Only JPEG, PNG and WebP images are accepted.",
    )


class UnprocessableImage(ServiceError):
    status, code, message = 422, "unprocessable_image", "The image could not be decoded."


class RateLimited(ServiceError):
    status, code, message = 429, "rate_limited", "Too many requests; try again later."


class Banned(ServiceError):
    status, code, message = (
        429,
        "temporarily_banned",
        "Too many invalid uploads; this client is temporarily blocked.",
    )


class Overloaded(ServiceError):
    status, code, message = 503, "overloaded", "The server is busy; try again shortly."


class NotReady(ServiceError):
    status, code, message = 503, "not_ready", "The model is still loading; try again shortly."
