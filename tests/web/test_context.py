"""web/context.py: the in-memory request keeps file parts in memory, and the body allowances
cover the upload cap in every form."""

from __future__ import annotations

import io

from flask import request

from web.context import FORM_OVERHEAD, json_body_allowance


def test_json_allowance_covers_base64_of_the_cap():
    cap = 10 * 1024 * 1024
    assert json_body_allowance(cap) >= len("data:image/png;base64,") + 4 * ((cap + 2) // 3)
    assert json_body_allowance(cap) < cap * 4 // 3 + 2 * FORM_OVERHEAD


def test_file_parts_stay_in_memory(app):
    """Werkzeug would spool a file part over 500 KB to a temporary file; ours stays BytesIO."""
    big = b"\x89PNG" + b"\0" * 2_000_000
    kind, value = _parsed_file(app, big)
    assert kind is io.BytesIO
    assert value == big


def test_file_parts_are_not_cut_by_the_form_field_allowance(app):
    """A CR at the end of werkzeug's first 64 KiB read stays in the decoder's buffer; the
    next read must still fit MAX_FORM_MEMORY_SIZE (a 64 KiB allowance answered 413)."""
    head, boundary = _multipart(b"")
    head = head[: head.index(b"\r\n--" + boundary.encode() + b"--")]
    data = bytearray(b"\x89PNG" + b"\0" * 300_000)
    data[64 * 1024 - len(head) - 1] = ord("\r")
    assert _parsed_file(app, bytes(data))[1] == bytes(data)


def _parsed_file(app, data: bytes) -> tuple[type, bytes]:
    """(stream type, content) of the `image` part, parsed from a real stream (the test
    client would spool the body itself)."""
    body, boundary = _multipart(data)
    with app.test_request_context(
        "/api/v1/parse",
        method="POST",
        input_stream=io.BytesIO(body),
        content_type=f"multipart/form-data; boundary={boundary}",
        content_length=len(body),
    ):
        stream = request.files["image"].stream
        return type(stream), stream.getvalue()


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "xXxBoundaryxXx"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary
