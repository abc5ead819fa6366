"""Abuse control around the protected endpoints: the Flask side of `security.abuse`.

Before the view: who the request is (API key or address) goes into the request record, and a
banned client is refused. Around the view: flask-limiter's rate limit for that identity. After
it: the X-RateLimit-* headers, and Retry-After only where it means something. Other routes
(health, readiness, metrics, pages) are never limited.

The rate-limit headers are written here, not by flask-limiter: its after_request hook reads the
storage again, and a storage that stopped while the view ran made that read raise in a hook,
where no error handler runs (a 500 with a traceback). Here a failed read refuses the request
like every other use of an unreachable storage: 503 `unavailable` with Retry-After.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask, request
from flask.wrappers import Response
from flask_limiter import Limiter
from limits.errors import StorageError

from security.abuse import (
    AbuseControl,
    BanList,
    Gatekeeper,
    Identity,
    StorageHealth,
    check_limit,
    load_keys,
)
from settings import Settings, SettingsError
from web.errors import storage_unavailable
from web.request_record import current_record


def _identity() -> Identity:
    identity = current_record().identity
    if identity is None:  # the limit wraps only views whose gate sets it
        raise RuntimeError("rate limit checked before the gate identified the request")
    return identity


def init_app(
    app: Flask,
    settings: Settings,
    *,
    endpoints: tuple[str, ...],
    on_storage_change: Callable[[bool], None] | None = None,
) -> AbuseControl:
    """Protect `endpoints` (already registered); `on_storage_change(up)` hears when the
    rate-limit storage stops or starts answering (`StorageHealth`).

    Raises:
        SettingsError: a malformed rate limit, API keys file or rate-limit storage.
    """
    check_limit("M2FP_RATE_LIMIT", settings.rate_limit)
    keys = load_keys(settings)
    limiter = Limiter(
        lambda: _identity().subject,
        storage_uri=settings.ratelimit_storage,
        storage_options={"wrap_exceptions": True},
        strategy="moving-window",
        headers_enabled=False,  # written by `_limit_headers`
        key_prefix="m2fp",
        swallow_errors=False,
    )
    # Registered before `_limit_headers` below, so it runs after it (reverse order).
    app.after_request(_own_retry_after)
    try:
        limiter.init_app(app)
    except Exception as exc:  # limits' ConfigurationError, redis URL errors...
        raise SettingsError(f"M2FP_RATELIMIT_STORAGE: {exc}") from None
    abuse = AbuseControl(
        limiter,
        Gatekeeper(
            default_limit=settings.rate_limit,
            keys=keys,
            keys_required=settings.api_keys_required,
            ipv6_prefix=settings.ipv6_client_prefix,
        ),
        BanList(
            limiter.storage,
            after=settings.ban_after,
            window_s=settings.ban_window_seconds,
            ban_s=settings.ban_seconds,
        ),
        StorageHealth(on_storage_change),
    )

    @app.before_request
    def _gate() -> None:
        if request.endpoint not in endpoints or request.method == "OPTIONS":
            return
        record = current_record()
        # Known before the ban check, so a banned key's audit line still names the key.
        record.identity = abuse.gatekeeper.identify(request.headers, request.remote_addr)
        abuse.refuse_if_banned(record.identity)
        abuse.health.answered()

    @app.after_request
    def _limit_headers(response: Response) -> Response:
        limit = limiter.current_limit
        if limit is None:  # not a limited request, or its check never reached the storage
            return response
        try:
            reset_at, remaining = limit.reset_at, limit.remaining
        except StorageError as exc:
            # Admitted while the storage answered, finished after it stopped: refused too.
            return storage_unavailable(exc)
        abuse.health.answered()
        response.headers["X-RateLimit-Limit"] = str(limit.limit.amount)
        response.headers["X-RateLimit-Remaining"] = str(remaining)
        response.headers["X-RateLimit-Reset"] = str(reset_at)
        if limit.breached:
            # as flask-limiter said it: whole seconds to the window's end, rounded down
            # (reset_at is already rounded up), so never above the window
            response.headers["Retry-After"] = str(max(1, int(reset_at - time.time())))
        return response

    limit = limiter.limit(lambda: _identity().limit, methods=["POST"])
    for endpoint in endpoints:
        app.view_functions[endpoint] = limit(app.view_functions[endpoint])
    app.extensions["m2fp_abuse"] = abuse
    return abuse


def _own_retry_after(response: Response) -> Response:
    """The service's own 429/503 keep their Retry-After, the limiter's 429 keeps its window's,
    every other response has none."""
    record = current_record()
    if record.retry_after is not None:
        response.headers["Retry-After"] = str(record.retry_after)
    elif record.error_code != "rate_limited":
        response.headers.pop("Retry-After", None)
    return response


__all__ = ["init_app"]
