"""Read the uploaded image out of a parse request, in memory, in one of three forms.

- multipart/form-data with one file in the field `image` (aliases `file`, `image_file`);
- a raw body whose Content-Type is an image type or application/octet-stream;
- JSON `{"image": "<base64>"}`, the string optionally a data URL (`data:image/png;base64,...`).

The result is the bytes plus what the client claims about them (declared type, file name):
`security.uploads` decides whether the claims and the bytes agree. Nothing here decodes images.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from security.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from web.context import FORM_OVERHEAD, json_body_allowance
from web.pages import size_label

FILE_FIELDS = ("image", "file", "image_file")
RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII)
# base64 and base64url alphabets both decode; whitespace (line-wrapped base64) is dropped.
_B64_TABLE = str.maketrans({"-": "+", "_": "/", " ": None, "\n": None, "\r": None, "\t": None})
_USAGE = (
    "Send the image as multipart field 'image', as a raw body with an image Content-Type, "
    'or as JSON {"image": "<base64>"}.'
)


@dataclass(frozen=True)
class Upload:
    data: bytes
    declared_type: str | None  # what the client says the bytes are; None: it did not say
    filename: str | None  # user data: used for the extension check only, never logged


def read_upload(request: Request, *, max_bytes: int) -> Upload:
    """The image of the request.

    Raises:
        BadRequest: no image, several images, malformed JSON or base64.
        PayloadTooLarge: more than `max_bytes` of image, or a body over its form's allowance.
        UnsupportedMediaType: a Content-Type that is none of the three forms.
    """
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        _read_body(request, max_bytes + FORM_OVERHEAD, max_bytes)  # parsed from the cache next
        upload = _from_multipart(request)
    elif mimetype == "application/json":
        body = _read_body(request, json_body_allowance(max_bytes), max_bytes)
        upload = _from_json(body, max_bytes)
    elif mimetype in RAW_TYPES or mimetype.startswith("image/"):
        declared = None if mimetype == "application/octet-stream" else mimetype
        upload = Upload(_read_body(request, max_bytes, max_bytes), declared, None)
    elif not mimetype:
        raise BadRequest("The request has no Content-Type. " + _USAGE)
    else:
        raise UnsupportedMediaType(f"Content-Type {mimetype[:60]!r} is not accepted. " + _USAGE)
    if not upload.data:
        raise BadRequest("The image is empty.")
    if len(upload.data) > max_bytes:
        raise too_large(max_bytes)
    return upload


def too_large(max_bytes: int) -> PayloadTooLarge:
    """The one 413 of the byte cap, whatever form the image came in: the limit in the units
    the docs and the page use ("10 MB")."""
    return PayloadTooLarge(f"The image is larger than the upload limit of {size_label(max_bytes)}.")


def _read_body(request: Request, allowance: int, max_bytes: int) -> bytes:
    """The whole body, at most `allowance` bytes (the form's room for `max_bytes` of image),
    else 413.

    A Content-Length over the limit is refused by werkzeug before reading. A chunked body
    has none, and werkzeug then silently stops at the limit: the image would arrive cut (a
    422, and a ban strike, for an honest client). Reading one byte more tells the two apart.
    """
    request.max_content_length = allowance + 1
    try:
        body = request.get_data(cache=True)
    except RequestEntityTooLarge:  # a Content-Length over the allowance
        raise too_large(max_bytes) from None
    if len(body) > allowance:
        raise too_large(max_bytes)
    return body


def _from_multipart(request: Request) -> Upload:
    present = [name for name in FILE_FIELDS if name in request.files]
    if not present:
        raise BadRequest("No file in the multipart field 'image'. " + _USAGE)
    if len(present) > 1 or len(request.files.getlist(present[0])) > 1:
        raise BadRequest("Send exactly one image per request.")
    part = request.files[present[0]]
    declared = part.mimetype or None
    if declared == "application/octet-stream":
        declared = None
    return Upload(part.stream.read(), declared, part.filename or None)


def _from_json(raw: bytes, max_bytes: int) -> Upload:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The body is not valid JSON. " + _USAGE) from None
    if not isinstance(body, dict) or not isinstance(body.get("image"), str):
        raise BadRequest('The JSON body needs a string field "image". ' + _USAGE)
    text: str = body["image"]
    declared = None
    match = _DATA_URL.match(text)
    if match:
        declared = (match.group(1) or "").lower() or None
        text = text[match.end() :]
    elif text.startswith("data:"):
        raise BadRequest("Only base64 data URLs are accepted (data:image/png;base64,...).")
    if len(text) // 4 * 3 > max_bytes + 3:
        raise too_large(max_bytes)
    text = text.translate(_B64_TABLE)
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest('The "image" field is not valid base64.') from None
    return Upload(data, declared, None)


__all__ = ["FILE_FIELDS", "Upload", "read_upload"]
