"""web/inputs.py through POST /api/v1/parse: the body forms (multipart, raw, JSON with
base64 or a data URL), malformed JSON and multipart bodies, and the byte cap of each form."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from tests.support import images
from tests.support.api import PARSE, assert_error, multipart


@pytest.mark.parametrize("field", ["image", "file", "image_file"])
def test_multipart_fields(client, field):
    r = client.post(PARSE + "?output=json", **multipart(images.png(), field=field))
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["image"] == {"width": 128, "height": 96}


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (images.png(), "image/png"),
        (images.jpeg(), "image/jpeg"),
        (images.webp(), "image/webp"),
        (images.png(), "application/octet-stream"),
    ],
)
def test_raw_body(client, data, mime):
    r = client.post(PARSE, data=data, content_type=mime, headers={"Accept": "application/json"})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.mimetype == "application/json"
    assert r.get_json()["image"] == {"width": 128, "height": 96}


@pytest.mark.parametrize(
    "encode",
    [
        lambda b: base64.b64encode(b).decode(),
        lambda b: "data:image/png;base64," + base64.b64encode(b).decode(),
        lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="),
        lambda b: base64.encodebytes(b).decode(),  # wrapped at 76 columns
    ],
    ids=["base64", "data-url", "urlsafe-unpadded", "line-wrapped"],
)
def test_json_body(client, encode):
    r = client.post(PARSE, json={"image": encode(images.png())})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["image"]["width"] == 128


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"data": b"{not json", "content_type": "application/json"}, "JSON"),
        ({"json": {"picture": "abc"}}, "image"),
        ({"json": ["image"]}, "image"),
        ({"json": {"image": 42}}, "image"),
        ({"json": {"image": "%%%not-base64%%%"}}, "base64"),
        ({"json": {"image": "data:image/png,rawdata"}}, "base64"),
        ({"json": {"image": "é" * 8}}, "base64"),
        ({"data": b"", "content_type": "image/png"}, "empty"),
        ({"data": images.png()}, "Content-Type"),
        ({"data": {"other": "x"}, "content_type": "multipart/form-data"}, "image"),
    ],
    ids=[
        "bad-json",
        "no-image-key",
        "not-object",
        "not-string",
        "bad-base64",
        "data-url-not-base64",
        "non-ascii",
        "empty-body",
        "no-content-type",
        "multipart-without-file",
    ],
)
def test_malformed_requests_are_400(client, kwargs, fragment):
    error = assert_error(client.post(PARSE, **kwargs), 400)
    assert fragment.lower() in error["message"].lower()


def test_two_images_are_400(client):
    data = {
        "image": (io.BytesIO(images.png()), "a.png"),
        "file": (io.BytesIO(images.png()), "b.png"),
    }
    assert_error(client.post(PARSE, data=data, content_type="multipart/form-data"), 400)
    same = {"image": [(io.BytesIO(images.png()), "a.png"), (io.BytesIO(images.png()), "b.png")]}
    assert_error(client.post(PARSE, data=same, content_type="multipart/form-data"), 400)


@pytest.mark.parametrize("mime", ["text/plain", "application/x-www-form-urlencoded", "text/html"])
def test_unsupported_request_types_are_415(client, mime):
    error = assert_error(client.post(PARSE, data=images.png(), content_type=mime), 415)
    assert "multipart" in error["message"]


def test_declared_type_must_match_raw_and_data_url(client):
    assert_error(client.post(PARSE, data=images.png(), content_type="image/jpeg"), 415)
    url = "data:image/webp;base64," + base64.b64encode(images.png()).decode()
    assert_error(client.post(PARSE, json={"image": url}), 415)


def test_byte_cap_is_413_for_every_form(make_app):
    app = make_app(max_upload_mb=0.05, rate_limit="1000 per minute")  # 52,428 bytes
    client = app.test_client()
    big = images.padded_png(60_000)
    assert_error(client.post(PARSE, data=big, content_type="image/png"), 413)
    assert_error(client.post(PARSE, **multipart(big)), 413)
    assert_error(client.post(PARSE, json={"image": base64.b64encode(big).decode()}), 413)
    # Far beyond the multipart allowance: werkzeug stops at MAX_CONTENT_LENGTH.
    assert_error(client.post(PARSE, **multipart(images.padded_png(200_000))), 413)
    fits = images.padded_png(50_000)
    assert client.post(PARSE, data=fits, content_type="image/png").status_code == 200
    assert client.post(PARSE, json={"image": base64.b64encode(fits).decode()}).status_code == 200


def chunked(client, data: bytes, content_type: str):
    """A body without Content-Length, as gunicorn presents a chunked request."""
    return client.post(
        PARSE,
        input_stream=io.BytesIO(data),
        content_type=content_type,
        headers={"Transfer-Encoding": "chunked"},  # werkzeug then ignores the Content-Length
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_byte_cap_is_413_for_chunked_bodies_too(make_app):
    """Werkzeug stops reading a chunked body at the limit without saying so: the cut image
    must not turn into a 422 (and a ban strike) but a 413."""
    app = make_app(max_upload_mb=0.05, rate_limit="1000 per minute", ban_after=1)
    client = app.test_client()
    cap = app.extensions["m2fp_settings"].max_upload_bytes
    fits, over = images.padded_png(cap), images.padded_png(cap + 1)
    assert chunked(client, fits, "image/png").status_code == 200
    assert_error(chunked(client, over, "image/png"), 413)
    body = json.dumps({"image": base64.b64encode(images.padded_png(cap + 4000)).decode()})
    assert_error(chunked(client, body.encode() + b" " * 70_000, "application/json"), 413)
    boundary = "b0undary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + images.padded_png(cap + 70_000)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    assert_error(chunked(client, form, f"multipart/form-data; boundary={boundary}"), 413)
    # None of these counted as an invalid upload (ban_after=1 would have banned).
    assert chunked(client, fits, "image/png").status_code == 200


def test_byte_cap_413s_state_the_limit_as_the_docs_do(make_app):
    from http_contract import size_label

    app = make_app(max_upload_mb=0.05, rate_limit="1000 per minute")  # 52,428 bytes
    client = app.test_client()
    label = size_label(app.extensions["m2fp_settings"].max_upload_bytes)
    assert label == "51 KB"
    assert size_label(10 * 1024 * 1024) == "10 MB"  # the default, as docs/api.md says it
    big = images.padded_png(60_000)
    answers = [
        client.post(PARSE, data=big, content_type="image/png"),
        client.post(PARSE, **multipart(big)),
        client.post(PARSE, json={"image": base64.b64encode(big).decode()}),
        client.post(PARSE, **multipart(images.padded_png(200_000))),  # Content-Length refused
        chunked(client, big, "image/png"),
    ]
    messages = {assert_error(r, 413)["message"] for r in answers}
    assert messages == {"The image is larger than the upload limit of 51 KB."}


_IMAGE_B64 = base64.b64encode(images.png()).decode()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
        (b'{"a":' * 2000 + b"1" + b"}" * 2000, "nested too deeply"),
        (b'{"image": "x", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "deeply"),
        (b'{"image": ' + b"9" * 5000 + b"}", "number is too long"),
        (b'{"image": 1e999999}', "string field"),
        (b'{"image": NaN}', "NaN is not JSON"),
        (b'{"image": -Infinity}', "Infinity is not JSON"),
        (b'{"image": "\xff\xfe"}', "not UTF-8"),
        (json.dumps({"image": _IMAGE_B64}).encode("utf-16"), "not UTF-8"),
        (b'{"image": "' + _IMAGE_B64.encode() + b'", "image": "AAAA"}', "repeated"),
        (b'{"image": "\\ud800"}', "base64"),
        (b'{"image": null}', "string field"),
        (b'{"image": ["' + _IMAGE_B64.encode() + b'"]}', "string field"),
        (b'{"image": {"data": "AAAA"}}', "string field"),
        (b'"' + _IMAGE_B64.encode() + b'"', "string field"),
        (b"12", "string field"),
        (b"", "Expecting value"),
        (b'{"image": "AAAA"', "delimiter"),
    ],
    ids=[
        "deep-arrays",
        "deep-objects",
        "deep-sibling",
        "huge-integer",
        "huge-float",
        "nan",
        "infinity",
        "invalid-utf8",
        "utf16",
        "duplicate-keys",
        "lone-surrogate",
        "null",
        "array",
        "object",
        "top-level-string",
        "top-level-number",
        "empty",
        "unterminated",
    ],
)
def test_any_malformed_json_body_is_a_json_400(client, body, fragment):
    """No RecursionError (a 500 with a traceback before) or other exception escapes."""
    r = client.post(PARSE, data=body, content_type="application/json")
    error = assert_error(r, 400)
    assert fragment.lower() in error["message"].lower()


def _multipart_raw(parts: list[tuple[bytes, bytes]], boundary: bytes = b"b0undary") -> dict:
    """A multipart body written byte for byte (the test client would quote a CR or LF)."""
    body = b"".join(
        b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n" for head, data in parts
    )
    body += b"--" + boundary + b"--\r\n"
    return {"data": body, "content_type": "multipart/form-data; boundary=" + boundary.decode()}


@pytest.mark.parametrize("newline", [b"\r\n", b"\n", b"\r"])
def test_line_break_in_a_file_name_is_400_not_413(client, newline):
    """The break ends the part's header early: the file becomes a plain form field, and one
    over the form-field cap (500 KB) was werkzeug's 413."""
    large = images.padded_png(700_000)
    head = (
        b'Content-Disposition: form-data; name="image"; filename="a'
        + newline
        + b'b.png"\r\nContent-Type: image/png'
    )
    for data in (large, images.png()):
        assert_error(client.post(PARSE, **_multipart_raw([(head, data)])), 400)


def test_too_many_parts_is_400_not_413(client):
    fields = [(b'Content-Disposition: form-data; name="f%d"' % i, b"v") for i in range(40)]
    image = (
        b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png",
        images.png(),
    )
    error = assert_error(client.post(PARSE, **_multipart_raw([*fields, image])), 400)
    assert "parts" in error["message"]
    # the same image in a well-formed body still parses
    assert client.post(PARSE + "?output=json", **_multipart_raw([image])).status_code == 200


def test_multipart_body_over_the_byte_cap_is_still_413(make_app):
    client = make_app(max_upload_mb=0.5, rate_limit="1000 per minute").test_client()
    large = images.padded_png(700_000)
    head = b'Content-Disposition: form-data; name="image"; filename="a.png"'
    assert_error(client.post(PARSE, **_multipart_raw([(head, large)])), 413)


def _mutations(base: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(len(data)))
            action = rng.random()
            if action < 0.5:
                data[at] = int(rng.integers(256))
            elif action < 0.75:
                del data[at : at + int(rng.integers(1, 8))]
            else:
                data[at:at] = rng.choice(
                    list(b'{}[]",:\\\r\n-0e'), int(rng.integers(1, 6))
                ).tobytes()
        out.append(bytes(data))
    return out


@pytest.mark.parametrize("form", ["json", "multipart"])
def test_mutated_bodies_only_ever_get_json_4xx_or_200(make_app, form):
    """Seeded byte flips, cuts and insertions of valid JSON and multipart bodies (image bytes
    kept tiny so that the framing gets hit): every answer is a JSON 200, 400, 413, 415 or 422
    (bans are off here: invalid uploads would earn one after three)."""
    client = make_app(rate_limit="10000 per minute", ban_after=1_000_000).test_client()
    rng = np.random.default_rng(13)
    image = images.png(8, 8)
    if form == "json":
        base = json.dumps({"image": "data:image/png;base64," + base64.b64encode(image).decode()})
        content_type = "application/json"
        bodies = _mutations(base.encode(), rng, 120)
    else:
        head = b'Content-Disposition: form-data; name="image"; filename="a.png"'
        built = _multipart_raw([(head + b"\r\nContent-Type: image/png", image)])
        content_type = built["content_type"]
        bodies = _mutations(built["data"], rng, 120)
    statuses = set()
    for body in bodies:
        r = client.post(PARSE + "?output=json", data=body, content_type=content_type)
        assert r.mimetype == "application/json"
        statuses.add(r.status_code)
    assert 400 in statuses and statuses <= {200, 400, 413, 415, 422}
