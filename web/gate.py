"""Abuse control around the protected endpoints: the Flask side of `security.abuse`.

Before the view: who the request is (API key or address) goes into the request record, and a
banned client is refused. Around the view: flask-limiter's rate limit for that identity. After
it: Retry-After only where it means something. Other routes (health, readiness, metrics, pages)
are never limited.
"""

from __future__ import annotations

from flask import Flask, request
from flask.wrappers import Response
from flask_limiter import Limiter

from security.abuse import AbuseControl, BanList, Gatekeeper, Identity, check_limit, load_keys
from settings import Settings, SettingsError
from web.request_record import current_record


def _identity() -> Identity:
    identity = current_record().identity
    if identity is None:  # the limit wraps only views whose gate sets it
        raise RuntimeError("rate limit checked before the gate identified the request")
    return identity


def init_app(app: Flask, settings: Settings, *, endpoints: tuple[str, ...]) -> AbuseControl:
    """Protect `endpoints` (already registered).

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
        headers_enabled=True,
        key_prefix="m2fp",
        swallow_errors=False,
    )
    # flask-limiter puts Retry-After on every response of a limited route and raises any
    # existing one to its own window reset. Registered before it, this hook runs after it.
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
    )

    @app.before_request
    def _gate() -> None:
        if request.endpoint not in endpoints or request.method == "OPTIONS":
            return
        record = current_record()
        # Known before the ban check, so a banned key's audit line still names the key.
        record.identity = abuse.gatekeeper.identify(request.headers, request.remote_addr)
        abuse.refuse_if_banned(record.identity)

    limit = limiter.limit(lambda: _identity().limit, methods=["POST"])
    for endpoint in endpoints:
        app.view_functions[endpoint] = limit(app.view_functions[endpoint])
    app.extensions["m2fp_abuse"] = abuse
    return abuse


def _own_retry_after(response: Response) -> Response:
    """The service's own 429/503 keep their Retry-After, the limiter's 429 keeps the limiter's,
    every other response has none."""
    record = current_record()
    if record.retry_after is not None:
        response.headers["Retry-After"] = str(record.retry_after)
    elif record.error_code != "rate_limited":
        response.headers.pop("Retry-After", None)
    return response


__all__ = ["init_app"]
