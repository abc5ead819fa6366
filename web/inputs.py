"""Read the uploaded image out of a parse request, in memory, in one of three forms.

- multipart/form-data with one file in the field `image` (aliases `file`, `image_file`);
- a raw body whose Content-Type is an image type or application/octet-stream;
- JSON `{"image": "<base64>"}`, the string optionally a data URL (`data:image/png;base64,...`).

The result is the bytes plus what the client claims about them (declared type, file name):
`security.uploads` decides whether the claims and the bytes agree. Nothing here decodes images.

Every malformed body is a `BadRequest` (400), whatever is wrong with it: JSON nested deeper than
Python's recursion limit, not UTF-8, with NaN or Infinity, repeated keys or wrong types; a
multipart body with too many parts or a form field over its memory cap (what a CR or LF in a
file name turns the file part into). Only a body over its byte allowance is a 413.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from http_contract import upload_limit_message
from security.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from web.context import FORM_OVERHEAD, MAX_FORM_FIELD_BYTES, MAX_FORM_PARTS, json_body_allowance

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
    return PayloadTooLarge(upload_limit_message(max_bytes))


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
    # The body is within its allowance (read above), so werkzeug's 413s from here on are about
    # the form's structure: more than MAX_FORM_PARTS parts, or a part without a file name (a
    # CR or LF inside the name ends the part's header early) holding more than the form-field
    # cap. Both are malformed requests, not sizes.
    try:
        files = request.files
    except RequestEntityTooLarge:
        raise BadRequest(
            f"The multipart body is malformed: more than {MAX_FORM_PARTS} parts, or a "
            f"non-file field over {MAX_FORM_FIELD_BYTES} bytes (is there a line break in the "
            "file name?). " + _USAGE
        ) from None
    present = [name for name in FILE_FIELDS if name in files]
    if not present:
        raise BadRequest("No file in the multipart field 'image'. " + _USAGE)
    if len(present) > 1 or len(files.getlist(present[0])) > 1:
        raise BadRequest("Send exactly one image per request.")
    part = files[present[0]]
    declared = part.mimetype or None
    if declared == "application/octet-stream":
        declared = None
    return Upload(part.stream.read(), declared, part.filename or None)


class _Refused(ValueError):
    """What the JSON module accepts but this API does not."""


def _object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object; a repeated key is an error (which of the two would count is ambiguous)."""
    body = dict(pairs)
    if len(body) != len(pairs):
        raise _Refused("a key is repeated")
    return body


def _no_constant(name: str) -> object:
    raise _Refused(f"{name} is not JSON")


# RFC 8259: UTF-8 only (json.loads on bytes would also guess UTF-16 and UTF-32); no NaN or
# Infinity (Python's extension); objects through _object.
_JSON = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_no_constant)


def _parse_json(raw: bytes) -> object:
    try:
        return _JSON.decode(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("The body is not valid JSON: it is not UTF-8. " + _USAGE) from None
    except RecursionError:
        # The C scanner counts its depth against the recursion limit and unwinds cleanly.
        raise BadRequest("The body is not valid JSON: it is nested too deeply.") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON ({exc.msg}). " + _USAGE) from None
    except _Refused as exc:
        raise BadRequest(f"The body is not valid JSON ({exc}). " + _USAGE) from None
    except ValueError:  # an integer of more than 4300 digits (sys.get_int_max_str_digits)
        raise BadRequest("The body is not valid JSON: a number is too long. " + _USAGE) from None


def _from_json(raw: bytes, max_bytes: int) -> Upload:
    body = _parse_json(raw)
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
