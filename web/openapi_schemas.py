"""The reusable parts of the OpenAPI document (web/openapi.py): the schemas of the error
shape and of the parse result, the error responses (one per status, their codes from the one
error list in http_contract.py), the headers and the security schemes.
"""

from __future__ import annotations

from typing import Any

from http_contract import ERRORS

# What each error status of a parse means; the codes of each come from the one error list.
ERROR_STATUSES = {
    "400": "Malformed request: no image, bad JSON or base64, an unknown or invalid option.",
    "401": "An API key is required (M2FP_API_KEYS_REQUIRED) and none was sent.",
    "403": "The API key is not valid.",
    "413": "Too many bytes (M2FP_MAX_UPLOAD_MB) or too many pixels (M2FP_MAX_PIXELS).",
    "415": "Not a JPEG, PNG or WebP, or the bytes are not what the name or type claims.",
    "422": "A JPEG, PNG or WebP that does not decode (truncated, corrupt).",
    "429": "Rate limited, or temporarily banned after invalid uploads.",
    "500": "A bug: the response carries only the request id; the operator log has the rest.",
    "503": "Model not ready, server overloaded, or the rate-limit storage unreachable.",
}
OTHER_STATUSES = {"404": "Not found."}


def ref(name: str) -> dict[str, str]:
    """A reference to the component schema `name`."""
    return {"$ref": f"#/components/schemas/{name}"}


def _codes(status: str) -> str:
    return ", ".join(f"`{kind.code}`" for kind in ERRORS if kind.status == int(status))


def _error_response(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
        "content": {"application/json": {"schema": ref("Error")}},
    }
    if retry_after:
        response["headers"]["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    return response


def components() -> dict[str, Any]:
    """The `components` object of the document."""
    return {
        "schemas": _schemas(),
        "responses": {
            f"E{status}": _error_response(
                f"{text} Codes: {_codes(status)}.", retry_after=status in ("429", "503")
            )
            for status, text in {**ERROR_STATUSES, **OTHER_STATUSES}.items()
        },
        "headers": {
            "X-Request-ID": {
                "description": "The request id (from nginx when sane, else generated).",
                "schema": {"type": "string"},
            },
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "schema": {"type": "integer"},
            },
        },
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
    }


def _schemas() -> dict[str, Any]:
    integer = {"type": "integer"}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "request_id"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "description": "A stable code (docs/api.md, Errors);"
                            " `http_<status>` for a status without its own.",
                            "anyOf": [
                                {"enum": [kind.code for kind in ERRORS]},
                                {"pattern": "^http_[0-9]{3}$"},
                            ],
                            "examples": ["unsupported_media_type"],
                        },
                        "message": {"type": "string"},
                        "request_id": {"type": "string"},
                    },
                }
            },
        },
        "Class": {
            "type": "object",
            "required": ["id", "key", "name", "color"],
            "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": 19},
                "key": {
                    "type": "string",
                    "pattern": "^[a-z][a-z_]*$",
                    "description": "Stable snake_case key (accepted by `classes=`).",
                },
                "name": {"type": "string", "description": "Display name."},
                "color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
            },
        },
        "ClassStat": {
            "allOf": [ref("Class")],
            "type": "object",
            "properties": {
                "pixels": integer,
                "fraction": {"type": "number", "minimum": 0, "maximum": 1},
            },
        },
        "EncodedImage": {
            "type": "object",
            "required": ["format", "data"],
            "properties": {
                "format": {"const": "png"},
                "data": {"type": "string", "contentEncoding": "base64"},
            },
        },
        "Mask": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["format", "size", "counts"],
                    "properties": {
                        "format": {"const": "rle"},
                        "size": {"type": "array", "items": integer, "minItems": 2, "maxItems": 2},
                        "counts": {"type": "string"},
                    },
                },
                ref("EncodedImage"),
            ]
        },
        "Person": {
            "type": "object",
            "required": ["id", "score", "bbox", "area", "parts", "part_pixels"],
            "properties": {
                "id": integer,
                "score": {"type": "number"},
                "bbox": {
                    "type": "array",
                    "items": integer,
                    "minItems": 4,
                    "maxItems": 4,
                    "description": "x, y, width, height (COCO).",
                },
                "area": {"type": "integer", "description": "Pixels of the person's mask."},
                "parts": {
                    "type": "array",
                    "items": integer,
                    "description": "Class ids present in the person, ascending.",
                },
                "part_pixels": {
                    "type": "object",
                    "description": "Class id (as a string: a JSON object key) → pixels of"
                    " that class in the person. Kept for v1; `part_areas` carries the same"
                    " counts with integer ids, keys and names.",
                    "additionalProperties": integer,
                },
                "part_areas": {
                    "type": "array",
                    "description": "The person's classes by id: id (integer, as in `parts`),"
                    " key, display name and pixels.",
                    "items": {
                        "type": "object",
                        "required": ["id", "key", "name", "pixels"],
                        "properties": {
                            "id": integer,
                            "key": {"type": "string"},
                            "name": {"type": "string"},
                            "pixels": integer,
                        },
                    },
                },
                "mask": ref("Mask"),
            },
        },
        "ParseResult": {
            "type": "object",
            "required": ["request_id", "image", "classes", "persons", "label_map", "timing_ms"],
            "properties": {
                "request_id": {"type": "string"},
                "image": {
                    "type": "object",
                    "required": ["width", "height"],
                    "properties": {"width": integer, "height": integer},
                },
                "classes": {"type": "array", "items": ref("ClassStat")},
                "persons": {"type": "array", "items": ref("Person")},
                "label_map": ref("EncodedImage"),
                "overlay": ref("EncodedImage"),
                "timing_ms": {
                    "type": "object",
                    "additionalProperties": {"type": "number"},
                    "properties": {
                        "decode": {"type": "number"},
                        "queue": {"type": "number"},
                        "inference": {"type": "number"},
                        "render": {"type": "number"},
                        "total": {"type": "number"},
                    },
                },
            },
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}},
        },
    }
