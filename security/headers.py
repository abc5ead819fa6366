"""Security headers on every response, errors included, and CORS (closed unless configured).

The core, `security_headers(path, mimetype)`, is a pure function; `init_app` applies it in an
`after_request` hook, which Flask also runs for the responses of error handlers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Flask is needed only by `init_app`, and imported there
    from flask import Flask
    from flask.wrappers import Response

# The policies nginx sends on its own responses too: one source for both.
from http_contract import API_CSP, PAGE_CSP, permissions_policy

CAMERA_PATHS = ("/kiosk",)  # the kiosk takes the photo with the camera; nothing else may


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
