"""The OpenAPI 3.1 document of the service, served at `GET /api/v1/openapi.json`: its operations.

The reusable components (error shape, result schemas, error responses) are in
`web/openapi_schemas.py`. Written by hand next to the views it describes; a test validates it with
openapi-spec-validator and checks that every route of `app.url_map` is in it.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from m2fp.labelsets import LABEL_SETS
from web.context import MAX_FORM_PARTS
from web.openapi_schemas import ERROR_STATUSES, components, ref
from web.options import (
    DEFAULT_ALPHA,
    IMAGE_FORMATS,
    MASK_FORMATS,
    OUTPUTS,
    PALETTES,
    PSD_MEDIA_TYPE,
    SIZES,
)

# The image types an upload may be (security.uploads.ALLOWED_MIMES), as multipart parts too.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
# A multipart part may also say application/octet-stream (what `curl -F` sends): not declared.
ALLOWED_PARTS = (*IMAGE_TYPES, "application/octet-stream")


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
        "content": {"application/json": {"schema": schema}},
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _classes_pattern() -> str:
    """A comma-separated list of ids 0-19 and the keys of every label set (a key or id only
    valid in another set than the request's `labels` is still refused, with a 400)."""
    keys = sorted({key for labels in LABEL_SETS.values() for key in labels.keys})
    item = "(1?[0-9]|" + "|".join(keys) + ")"
    return f"^{item}(,{item})*$"


def _parse_operation(max_bytes: int) -> dict[str, Any]:
    binary = {"type": "string", "contentMediaType": "application/octet-stream"}
    image_headers = {
        "X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"},
        "X-Image-Width": {
            "description": "Width of the returned image.",
            "schema": {"type": "integer"},
        },
        "X-Image-Height": {
            "description": "Height of the returned image.",
            "schema": {"type": "integer"},
        },
        "X-Persons": {"description": "Persons found.", "schema": {"type": "integer"}},
    }
    responses: dict[str, Any] = {
        "200": {
            "description": "The parse: a JSON document, an overlay, cutout or matte image, or"
            " a layered Photoshop file.",
            "headers": image_headers,
            "content": {
                "application/json": {"schema": ref("ParseResult")},
                "image/png": {"schema": binary},
                "image/webp": {"schema": binary},
                PSD_MEDIA_TYPE: {"schema": binary},
            },
        }
    }
    for status in ERROR_STATUSES:
        responses[status] = {"$ref": f"#/components/responses/E{status}"}
    return {
        "operationId": "parse",
        "summary": "Parse the persons of one image.",
        "description": (
            "Finds every person and labels each pixel with one of 20 classes. Without `output`"
            " the Accept header decides: `image/png` (or `image/webp`) before JSON gives an"
            " overlay, anything else JSON. Results are at the size of the working copy (longest"
            " side at most M2FP_MAX_SIDE), or at the photo's own size with `size=original`."
            f" At most {max_bytes} bytes of image. Rate limited per client address or per API"
            " key."
        ),
        "security": [{}, {"bearer": []}, {"apiKey": []}],
        "parameters": [
            _query(
                "output",
                "overlay (colour overlay image), json, cutout (transparent image of"
                " `classes` and/or `person`), matte (single-channel alpha matte, 255 inside,"
                " of `classes` and/or `person`), or psd (layered Photoshop file: the photo,"
                " one layer per part, one per person). Default from the Accept header.",
                {"type": "string", "enum": list(OUTPUTS)},
            ),
            _query(
                "format",
                "Image format of overlay, cutout and matte (WebP is lossless).",
                {"type": "string", "enum": list(IMAGE_FORMATS), "default": "png"},
            ),
            _query(
                "alpha",
                "Overlay opacity.",
                {"type": "number", "minimum": 0, "maximum": 1, "default": DEFAULT_ALPHA},
            ),
            _query(
                "person_masks",
                "Each person's mask in the JSON (without it persons keep id, score, bbox and"
                " parts).",
                {"type": "boolean", "default": True},
            ),
            {
                **_query(
                    "instances",
                    "The former name of `person_masks`, still accepted (not both).",
                    {"type": "boolean", "default": True},
                ),
                "deprecated": True,
            },
            _query(
                "mask_format",
                "Encoding of per-person masks: COCO compressed RLE or base64 PNG.",
                {"type": "string", "enum": list(MASK_FORMATS), "default": "rle"},
            ),
            _query(
                "include_overlay",
                "Also put the overlay PNG (base64) in the JSON.",
                {"type": "boolean", "default": False},
            ),
            _query(
                "classes",
                "Comma-separated class ids (0-19) or stable keys (`hair`, `upper_clothes`,"
                " `left_arm`, ... exactly as `GET /api/v1/classes` lists them):"
                " the classes of a cutout (default 1-19), or the classes tinted in an overlay"
                " (default all).",
                {"type": "string", "pattern": _classes_pattern()},
            ),
            _query(
                "person",
                "Only this person (1..N, as `persons[].id`) in a cutout or matte; without"
                " `classes`, the person's whole mask; ignored by the other outputs. A person"
                " the image does not have gets an empty cutout or matte (`X-Persons`: how many"
                " were found).",
                {"type": "integer", "minimum": 1, "maximum": 10000},
            ),
            _query(
                "size",
                "working: results at the working copy's size; original: at the photo's own"
                " size (after EXIF orientation), every mask and the label map from the class"
                " probabilities resized to it.",
                {"type": "string", "enum": list(SIZES), "default": "working"},
            ),
            _query(
                "labels",
                "The label set of ids, keys, names, colours and the label map: the model's"
                " 20 CIHP classes, LIP (20), ATR (18) or coarse (7); `classes` refers to it.",
                {"type": "string", "enum": list(LABEL_SETS), "default": "cihp"},
            ),
            _query(
                "palette",
                "The colours of the overlay, the legend and the layers: cihp (the model's own)"
                " or cvd (safe for colour-vision deficiencies: touching parts stay apart under"
                " protanopia, deuteranopia and tritanopia).",
                {"type": "string", "enum": list(PALETTES), "default": "cihp"},
            ),
        ],
        "requestBody": _parse_body(max_bytes),
        "responses": responses,
    }


def _parse_body(max_bytes: int) -> dict[str, Any]:
    """The three forms of the image (web/inputs.py); what `security.uploads` then checks
    (a JPEG, PNG or WebP that decodes) is said in words: no schema keyword says it."""
    image = (
        "A JPEG, PNG or WebP image that decodes, whose bytes are what its Content-Type and file"
        " name claim."
    )
    # An empty image is 400, more than max_bytes 413.
    raw = {"type": "string", "format": "binary", "minLength": 1, "maxLength": max_bytes}
    part = {**raw, "contentMediaType": "application/octet-stream", "description": image}
    return {
        "required": True,
        "description": image + f" At most {max_bytes} bytes.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {
                            **part,
                            "description": "The image (aliases: `file`, `image_file`; one"
                            " file per request).",
                        }
                    },
                    "required": ["image"],
                    # werkzeug's MAX_FORM_PARTS: more parts are 400
                    "maxProperties": MAX_FORM_PARTS,
                },
                "encoding": {"image": {"contentType": ", ".join(ALLOWED_PARTS)}},
            },
            **{mime: {"schema": {**raw, "contentMediaType": mime}} for mime in IMAGE_TYPES},
            "application/octet-stream": {"schema": {**raw, "description": image}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "byte",
                            "minLength": 1,
                            # base64 of at most max_bytes: 4 characters per 3 bytes
                            "maxLength": max_bytes // 3 * 4,
                            "description": "The image in base64 (or base64url), or a data URL"
                            " (`data:image/png;base64,...`).",
                        }
                    },
                    "required": ["image"],
                }
            },
        },
    }


def _queue_operation() -> dict[str, Any]:
    seconds = {"type": ["number", "null"], "minimum": 0}
    counts = {"type": "integer", "minimum": 0}
    return {
        "operationId": "queue",
        "summary": "How long a parse would wait now: parse requests in flight, images waiting"
        " and running, the batch size, measured seconds per image. No per-request data; not"
        " rate limited.",
        "responses": {
            "200": _json_response(
                "A snapshot of this worker's queue.",
                {
                    "type": "object",
                    "required": [
                        "ready",
                        "in_flight",
                        "queued",
                        "running",
                        "capacity",
                        "service_seconds",
                        "expected_wait_seconds",
                    ],
                    "properties": {
                        "ready": {"type": "boolean"},
                        "in_flight": counts,
                        "queued": counts,
                        "running": counts,
                        "capacity": {"type": "integer", "minimum": 1},
                        "service_seconds": seconds,
                        "expected_wait_seconds": seconds,
                    },
                },
            )
        },
    }


def openapi_document(app: Flask) -> dict[str, Any]:
    document = _document(app)
    # Any operation may fail unexpectedly: a JSON 500 with the request id (web/errors.py).
    for operations in document["paths"].values():
        for operation in operations.values():
            operation["responses"].setdefault("500", {"$ref": "#/components/responses/E500"})
    return document


def _document(app: Flask) -> dict[str, Any]:
    settings = app.extensions["m2fp_settings"]
    html = {"content": {"text/html": {"schema": {"type": "string"}}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Human parsing API",
            "version": "1",
            "description": "Private human parsing: uploads are processed in memory and never"
            ' stored. Errors are JSON `{"error": {code, message, request_id}}`.',
        },
        "paths": {
            "/": {
                "get": {
                    "summary": "Drag-and-drop page.",
                    "responses": {"200": {"description": "HTML page.", **html}},
                }
            },
            "/kiosk": {
                "get": {
                    "summary": "Kiosk page.",
                    "responses": {"200": {"description": "HTML page.", **html}},
                }
            },
            "/static/{filename}": {
                "get": {
                    "summary": "Scripts, styles and images of the pages.",
                    "parameters": [
                        {
                            "name": "filename",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "The file."},
                        "404": {"$ref": "#/components/responses/E404"},
                    },
                }
            },
            "/api/v1/parse": {"post": _parse_operation(settings.max_upload_bytes)},
            "/api/v1/classes": {
                "get": {
                    "operationId": "classes",
                    "summary": "Class ids, keys, names and palette colours (the legend).",
                    "parameters": [
                        _query(
                            "labels",
                            "The label set to list (as `labels` of the parse).",
                            {"type": "string", "enum": list(LABEL_SETS), "default": "cihp"},
                        ),
                        _query(
                            "palette",
                            "The colours listed (as `palette` of the parse).",
                            {"type": "string", "enum": list(PALETTES), "default": "cihp"},
                        ),
                    ],
                    "responses": {
                        "200": _json_response(
                            "The classes of the label set (20 for CIHP).",
                            {
                                "type": "object",
                                "required": ["classes"],
                                "properties": {"classes": {"type": "array", "items": ref("Class")}},
                            },
                        )
                    },
                }
            },
            "/api/v1/queue": {"get": _queue_operation()},
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {"200": _json_response("OpenAPI 3.1.", {"type": "object"})},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is alive.",
                    "responses": {"200": _json_response("Alive.", ref("Status"))},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "A parse would be accepted now (model loaded and warmed up, memory"
                    " below the shedding threshold, rate-limit storage reachable).",
                    "responses": {
                        "200": _json_response("Ready.", ref("Status")),
                        "503": {"$ref": "#/components/responses/E503"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics of this worker (M2FP_METRICS_ALLOW only).",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "403": {"$ref": "#/components/responses/E403"},
                    },
                }
            },
        },
        "components": components(),
    }


__all__ = ["openapi_document"]
