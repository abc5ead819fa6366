"""The record of one request: what the audit line, the metrics and the error responses need.

A `RequestRecord` is made by the first `before_request` hook, stored once on `flask.g` and read
through `current_record()`. The view, the abuse gate and the error mapper fill in its fields;
the last `after_request` hook echoes the request id and hands the fields to the audit log.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field

from flask import Flask, g, request
from flask.wrappers import Response

from security.abuse import Identity
from security.audit import AuditLog

REQUEST_ID_HEADER = "X-Request-ID"
# What nginx's $request_id (32 hex digits), UUIDs and most tracing ids look like; anything else
# (too long, spaces, control characters that could forge log lines) is replaced by our own id.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass
class RequestRecord:
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)  # perf_counter() at the first hook
    identity: Identity | None = None  # who the request is: only on protected endpoints
    bytes_in: int = 0  # bytes of image read from the body
    image_size: tuple[int, int] | None = None  # (width, height) as uploaded
    persons: int | None = None  # persons found
    trailer_bytes: int | None = None  # bytes after the decoded image, dropped undecoded
    error_code: str | None = None  # the code of the error response, if one was sent
    retry_after: int | None = None  # the service's own Retry-After, in seconds
    audited: bool = False  # the audit line is written (after_request hooks may run twice)
    in_flight: bool = False  # counted among the parses in flight (web/queue_status.py)

    @classmethod
    def start(cls, incoming_id: str) -> RequestRecord:
        """A record whose id is the client's (or nginx's) `incoming_id` when it looks sane."""
        if _SANE_REQUEST_ID.fullmatch(incoming_id):
            return cls(request_id=incoming_id)
        return cls()

    @property
    def api_key_id(self) -> str | None:
        return self.identity.api_key_id if self.identity is not None else None


def current_record() -> RequestRecord:
    """The record of the current request (made here if the first hook never ran)."""
    record = g.get("m2fp_record")
    if record is None:
        record = g.m2fp_record = RequestRecord()
    return record


def init_app(app: Flask, audit: AuditLog) -> None:
    """Start a record before every request; echo its id and write its audit line after.

    Register this before any other `after_request` hook: Flask runs them in reverse order, so
    the audit line sees the final status and headers.
    """

    @app.before_request
    def _start() -> None:
        g.m2fp_record = RequestRecord.start(request.headers.get(REQUEST_ID_HEADER, ""))

    @app.after_request
    def _finish(response: Response) -> Response:
        record = current_record()
        response.headers[REQUEST_ID_HEADER] = record.request_id
        if record.audited:  # an after_request hook failed and Flask ran them again
            return response
        record.audited = True
        audit.emit(
            request_id=record.request_id,
            client=request.remote_addr,
            method=request.method,
            path=request.path,
            status=response.status_code,
            latency_s=time.perf_counter() - record.started,
            api_key=record.api_key_id,
            bytes_in=request.content_length or record.bytes_in,
            image_size=record.image_size,
            persons=record.persons,
            outcome="ok" if response.status_code < 400 else record.error_code or "error",
            trailer_bytes=record.trailer_bytes,
        )
        return response


__all__ = ["REQUEST_ID_HEADER", "RequestRecord", "current_record", "init_app"]
