"""The request object of the service: uploads stay in memory, every request has an id.

Werkzeug spools any multipart file part over 500 KB into an anonymous file in /tmp
(`formparser.default_stream_factory`); `InMemoryRequest` hands it a `BytesIO` instead. That is
safe only because `MAX_CONTENT_LENGTH` bounds the body, which `flask_config` always sets.
"""

from __future__ import annotations

import io
import re
import time
import uuid
from typing import IO

from flask import Flask, Request, g, request
from flask.wrappers import Response

from http_contract import FORM_OVERHEAD, json_body_allowance
from settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"
# What nginx's $request_id (32 hex digits), UUIDs and most tracing ids look like; anything else
# (too long, spaces, control characters that could forge log lines) is replaced by our own id.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Non-file form fields (never needed here) are held in memory up to this size, 413 above.
# Werkzeug's multipart decoder also checks its carry-over buffer plus each 64 KiB read
# against it, so a value near 64 KiB rejects valid file uploads depending on where a CR or LF
# falls: keep Flask's default, far above the read size.
MAX_FORM_FIELD_BYTES = 500_000
MAX_FORM_PARTS = 16


class InMemoryRequest(Request):
    """A Flask request whose uploaded files are `BytesIO` objects, never temporary files."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


def flask_config(settings: Settings) -> dict[str, object]:
    """Flask settings that follow from the service settings."""
    return {
        # Multipart and raw bodies; the JSON route raises its own allowance per request.
        "MAX_CONTENT_LENGTH": settings.max_upload_bytes + FORM_OVERHEAD,
        "MAX_FORM_MEMORY_SIZE": MAX_FORM_FIELD_BYTES,
        "MAX_FORM_PARTS": MAX_FORM_PARTS,
        "TRAP_BAD_REQUEST_ERRORS": False,
    }


def request_id() -> str:
    """The id of the current request (set by the first hook; made here if that never ran)."""
    if "request_id" not in g:
        g.request_id = uuid.uuid4().hex
    return g.request_id


def init_app(app: Flask) -> None:
    """Use `InMemoryRequest`, give each request an id and a start time, echo the id back."""
    app.request_class = InMemoryRequest
    app.json.sort_keys = False  # keep the documented field order of the JSON results

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex

    @app.after_request
    def _echo_id(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = request_id()
        return response


__all__ = [
    "InMemoryRequest",
    "flask_config",
    "init_app",
    "json_body_allowance",
    "request_id",
]
