"""Security headers on every response, errors included, and CORS (closed unless configured).

The core, `security_headers(path, mimetype)`, is a pure function; `init_app` applies it in an
`after_request` hook, which Flask also runs for the responses of error handlers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Flask is needed only by `init_app`, and imported there
    from flask import Flask
    from flask.wrappers import Response

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
CAMERA_PATHS = ("/kiosk",)  # the kiosk takes the photo with the camera; nothing else may


def permissions_policy(camera: bool) -> str:
    features = [f"{name}=()" for name in _POWERFUL_FEATURES]
    features.append("camera=(self)" if camera else "camera=()")
    return ", ".join(sorted(features))


def security_headers(path: str, mimetype: str | None) -> dict[str, str]:
    """The headers for a response to `path` with body type `mimetype`."""
    headers = {
        "Content-Security-Policy": PAGE_CSP if mimetype == "text/html" else API_CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": permissions_policy(path.rstrip("/") in CAMERA_PATHS),
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "X-Frame-Options": "DENY",
        "X-Permitted-Cross-Domain-Policies": "none",
    }
    if not path.startswith("/static/"):
        # Results, errors, pages: nothing of a request may sit in a browser or proxy cache.
        headers["Cache-Control"] = "no-store"
    return headers


def init_app(app: Flask, *, cors_origins: tuple[str, ...] = ()) -> None:
    """Add the headers to every response; open CORS on /api/ to `cors_origins` only."""
    from flask import request

    @app.after_request
    def _headers(response: Response) -> Response:
        for name, value in security_headers(request.path, response.mimetype).items():
            response.headers[name] = value
        return response

    if cors_origins:
        from flask_cors import CORS

        CORS(
            app,
            resources={r"/api/*": {"origins": list(cors_origins)}},
            methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
            expose_headers=[
                "Retry-After",
                "X-Request-ID",
                "X-Image-Width",
                "X-Image-Height",
                "X-Persons",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
            ],
            supports_credentials=False,
            max_age=600,
            vary_header=True,
        )


__all__ = ["API_CSP", "PAGE_CSP", "init_app", "permissions_policy", "security_headers"]
