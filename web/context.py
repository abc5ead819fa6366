"""The request object of the service: uploads stay in memory.

Werkzeug spools any multipart file part over 500 KB into an anonymous file in /tmp
(`formparser.default_stream_factory`); `InMemoryRequest` hands it a `BytesIO` instead. That is
safe only because `MAX_CONTENT_LENGTH` bounds the body, which `flask_config` always sets.
"""

from __future__ import annotations

import io
from typing import IO

from flask import Flask, Request

from http_contract import FORM_OVERHEAD, json_body_allowance
from settings import Settings

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


def init_app(app: Flask) -> None:
    """Use `InMemoryRequest`; keep the documented field order of the JSON results."""
    app.request_class = InMemoryRequest
    app.json.sort_keys = False


__all__ = [
    "InMemoryRequest",
    "flask_config",
    "init_app",
    "json_body_allowance",
]
