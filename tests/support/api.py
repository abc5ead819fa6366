"""Helpers for the web tests that post to the parse API through the Flask test client."""

from __future__ import annotations

import io
import json

from security.api_keys import hash_key, new_key
from tests.support import images

PARSE = "/api/v1/parse"
ERROR_CODES = {
    400: "bad_request",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_image",
}


def multipart(data: bytes, name: str = "photo.png", field: str = "image", mime: str = "image/png"):
    return {"data": {field: (io.BytesIO(data), name, mime)}, "content_type": "multipart/form-data"}


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["code"] == (code or ERROR_CODES[status])
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    assert body["error"]["message"]
    return body["error"]


def parse(client):
    return client.post(PARSE + "?output=json", data=images.png(), content_type="image/png")


def write_keys(path, limits: dict[str, str | None]) -> dict[str, str]:
    """A keys file (security.api_keys format) with one key per id; returns id → key."""
    keys, entries = {}, []
    for key_id, limit in limits.items():
        keys[key_id] = new_key()
        entry = {"id": key_id, "sha256": hash_key(keys[key_id])}
        if limit:
            entry["limit"] = limit
        entries.append(entry)
    path.write_text(json.dumps({"keys": entries}))
    return keys
