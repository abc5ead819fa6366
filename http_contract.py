"""What nginx and the app must agree on, in one place: the error list, the body-size formula, the
time limits derived from the latency target, the Content-Security-Policy and the
Permissions-Policy.

Both sides import this module: the app (`security/errors.py`, `web/errors.py`,
`web/openapi_schemas.py`, `web/context.py`, `security/headers.py`) and the edge's config renderer
(`nginx/render.py`), which runs in the edge image without Flask. So: the standard library only,
and nothing from the rest of the repository. `tests/test_http_contract.py` proves that what
each side sends is what is written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# -- errors -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorKind:
    """One error of the API: `{"error": {"code": code, "message": ..., "request_id": ...}}`
    with HTTP `status`. `message` is the default; where the sender knows more (the rejected
    header, the limit) it says so instead."""

    status: int
    code: str
    message: str
    # What a bare HTTP status is called (werkzeug's exceptions, nginx's own error pages); a
    # status with several causes has exactly one generic kind.
    generic: bool = True
    # Seconds to ask a client to wait, where the sender has no better figure.
    retry_after: int | None = None


ERRORS: tuple[ErrorKind, ...] = (
    ErrorKind(400, "bad_request", "The request is malformed."),
    ErrorKind(401, "unauthorized", "An API key is required."),
    ErrorKind(403, "forbidden", "Access to this resource is not allowed."),
    ErrorKind(404, "not_found", "There is nothing at this address."),
    ErrorKind(405, "method_not_allowed", "This method is not allowed here."),
    ErrorKind(406, "not_acceptable", "No acceptable representation."),
    ErrorKind(413, "payload_too_large", "The upload is too large."),
    ErrorKind(414, "uri_too_long", "The address is too long."),
    ErrorKind(415, "unsupported_media_type", "Only JPEG, PNG and WebP images are accepted."),
    ErrorKind(422, "unprocessable_image", "The image could not be decoded.", generic=False),
    ErrorKind(429, "rate_limited", "Too many requests; try again later.", retry_after=1),
    ErrorKind(
        429,
        "temporarily_banned",
        "Too many invalid uploads; this client is temporarily blocked.",
        generic=False,
    ),
    ErrorKind(431, "headers_too_large", "The request headers are too large."),
    ErrorKind(500, "internal_error", "The server could not complete the request."),
    # A transfer coding other than chunked (nginx's own refusal).
    ErrorKind(501, "not_implemented", "The request uses a feature this server does not support."),
    ErrorKind(502, "bad_gateway", "The service is unavailable; try again shortly.", retry_after=5),
    # Something the service needs is down (the rate-limit storage): it refuses to serve.
    ErrorKind(503, "unavailable", "The service is unavailable; try again shortly.", retry_after=5),
    # The engine's queue is full, a result is too slow, or memory is short.
    ErrorKind(503, "overloaded", "The server is busy; try again shortly.", generic=False),
    # The model is loading, or failed to load.
    ErrorKind(503, "not_ready", "The model is still loading; try again shortly.", generic=False),
    # `/readyz` of an instance that is stopping: it still serves, but should get no new work.
    ErrorKind(
        503,
        "draining",
        "The server is shutting down; try another instance.",
        generic=False,
        retry_after=5,
    ),
    ErrorKind(
        504,
        "gateway_timeout",
        "The service took too long to answer; try again later.",
        retry_after=5,
    ),
    # A request line that names an HTTP version other than 1.0 or 1.1 (HTTP/2 is negotiated
    # in TLS, never named in a request line).
    ErrorKind(505, "http_version_not_supported", "This HTTP version is not supported."),
)
ERROR_CODES: dict[str, ErrorKind] = {kind.code: kind for kind in ERRORS}
_GENERIC: dict[int, ErrorKind] = {kind.status: kind for kind in ERRORS if kind.generic}


def error_kind(code: str) -> ErrorKind:
    """The kind called `code` (KeyError for a code not in the list)."""
    return ERROR_CODES[code]


def generic_error(status: int) -> ErrorKind | None:
    """What a bare `status` is called, or None for a status outside the list."""
    return _GENERIC.get(status)


# -- body sizes ---------------------------------------------------------------------------------

# Multipart framing, part headers and a few small fields on top of the image itself; also the
# JSON envelope and data-URL prefix around a base64 image.
FORM_OVERHEAD = 64 * 1024


def json_body_allowance(max_bytes: int) -> int:
    """The largest JSON body worth reading: `max_bytes` as base64 (4 characters per 3 bytes)
    plus a data-URL prefix and JSON framing. The largest body the app accepts, so nginx's
    body cap too."""
    return -(-max_bytes // 3) * 4 + FORM_OVERHEAD


def upload_bytes_for_body(max_body_bytes: int) -> int:
    """The image byte cap behind a body cap made by `json_body_allowance` (its inverse, to
    within two bytes): what nginx, which only knows the body cap, states as the limit."""
    return max(0, max_body_bytes - FORM_OVERHEAD) * 3 // 4


def size_label(n_bytes: int) -> str:
    """`10485760` → "10 MB", `1572864` → "1.5 MB": a cap as the docs and the page state it
    (MB = 1024 × 1024 bytes)."""
    mb = n_bytes / (1024 * 1024)
    if mb >= 1:
        return f"{mb:.1f}".removesuffix(".0") + " MB"
    return f"{max(1, round(n_bytes / 1024))} KB"


def upload_limit_message(max_upload_bytes: int) -> str:
    """The one message of a 413 for too many bytes, from the app or from nginx."""
    return f"The image is larger than the upload limit of {size_label(max_upload_bytes)}."


# -- time limits --------------------------------------------------------------------------------

# The engine's deadline over the target: room for the estimate's error, so that work admitted
# at the target's edge still finishes on a machine half again as slow as measured.
DEADLINE_OVER_TARGET = 1.5
# What nginx and gunicorn allow beyond the engine's deadline: the decode before admission, the
# render and the response after the result, at least this many seconds or a quarter of the
# target, whichever is more.
MIN_PROXY_MARGIN_S = 10.0


@dataclass(frozen=True)
class TimeLimits:
    """Every wait of a parse, derived from one setting (`M2FP_LATENCY_TARGET_SECONDS`).

    - `latency_target_s`: the engine admits a parse only when the work ahead of it and its own
      forward are expected to finish within it; the rest is refused at once with 503;
    - `engine_deadline_s`: the longest an admitted parse waits for its result (queue and
      forward), counted from admission: 1.5 times the target; then 503 `overloaded`, and work
      still queued is dropped;
    - `proxy_read_timeout_s`: nginx's wait for the app's answer (504 after): later than the
      engine's deadline by the margin, so the app's 503 always arrives first;
    - `worker_timeout_s`: gunicorn's worker timeout, no shorter than what nginx waits.
    """

    latency_target_s: float
    engine_deadline_s: float
    proxy_read_timeout_s: int
    worker_timeout_s: int


def time_limits(latency_target_s: float) -> TimeLimits:
    """The time limits for a latency target in seconds (positive)."""
    if not latency_target_s > 0:
        raise ValueError("the latency target must be positive")
    margin = max(MIN_PROXY_MARGIN_S, latency_target_s / 4)
    deadline = latency_target_s * DEADLINE_OVER_TARGET
    read_timeout = math.ceil(deadline + margin)
    return TimeLimits(
        latency_target_s=latency_target_s,
        engine_deadline_s=deadline,
        proxy_read_timeout_s=read_timeout,
        worker_timeout_s=read_timeout,
    )


# -- security headers ---------------------------------------------------------------------------

# HTML pages: their own scripts and styles only (no inline code, no third-party origins: the
# pages work offline); results shown through object URLs (blob:) or data: URLs.
PAGE_CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
# Everything else (JSON, images, text): nothing may load or run, nothing may frame it.
API_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
_POWERFUL_FEATURES = (
    "accelerometer",
    "autoplay",
    "display-capture",
    "geolocation",
    "gyroscope",
    "magnetometer",
    "microphone",
    "midi",
    "payment",
    "usb",
)


def permissions_policy(camera: bool) -> str:
    """Every powerful feature off; the camera on for this origin only when `camera`."""
    features = [f"{name}=()" for name in _POWERFUL_FEATURES]
    features.append("camera=(self)" if camera else "camera=()")
    return ", ".join(sorted(features))


__all__ = [
    "API_CSP",
    "ERRORS",
    "ERROR_CODES",
    "FORM_OVERHEAD",
    "PAGE_CSP",
    "ErrorKind",
    "TimeLimits",
    "error_kind",
    "generic_error",
    "json_body_allowance",
    "permissions_policy",
    "size_label",
    "upload_bytes_for_body",
    "upload_limit_message",
    "time_limits",
]
