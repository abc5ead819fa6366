"""POST /api/v1/parse through the Flask test client: input forms, options, negotiation,
result shapes and the 4xx answers of the contract."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

import web
from m2fp.labels import CLASS_NAMES
from tests.support import images
from tests.support.paths import REPO

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


@pytest.mark.parametrize(
    ("data", "name", "mime"),
    [
        (images.TEXT, "photo.png", "image/png"),
        (images.HTML, "photo.jpg", "image/jpeg"),
        (images.SVG, "drawing.svg", "image/svg+xml"),
        (images.SVG, "photo.png", "image/png"),
        (images.gif(), "anim.gif", "image/gif"),
        (images.png(), "photo.jpg", "image/jpeg"),  # the bytes are not what the name says
        (images.jpeg(), "photo.png", "image/png"),
    ],
    ids=["text-as-png", "html-as-jpg", "svg", "svg-as-png", "gif", "png-named-jpg", "jpeg-as-png"],
)
def test_not_an_allowed_image_is_415(client, data, name, mime):
    assert_error(client.post(PARSE, **multipart(data, name=name, mime=mime)), 415)


def test_declared_type_must_match_raw_and_data_url(client):
    assert_error(client.post(PARSE, data=images.png(), content_type="image/jpeg"), 415)
    url = "data:image/webp;base64," + base64.b64encode(images.png()).decode()
    assert_error(client.post(PARSE, json={"image": url}), 415)


def test_truncated_jpeg_is_422(client):
    assert_error(client.post(PARSE, data=images.truncated_jpeg(), content_type="image/jpeg"), 422)


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


def test_pixel_cap_is_413(client):
    error = assert_error(client.post(PARSE, data=images.png_bomb(), content_type="image/png"), 413)
    assert error["code"] == "payload_too_large"


def test_working_copy_is_downscaled_to_max_side(make_app):
    app = make_app(max_side=64)
    r = app.test_client().post(
        PARSE + "?output=json", data=images.png(128, 96), content_type="image/png"
    )
    assert r.get_json()["image"] == {"width": 64, "height": 48}


# --- options and negotiation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "mimetype"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("application/json", "application/json"),
        ("image/png", "image/png"),
        ("image/png, application/json", "image/png"),
        ("application/json, image/png", "application/json"),
        ("application/json;q=0.5, image/png", "image/png"),
        ("image/webp", "image/webp"),
        ("image/*", "image/png"),
        ("image/png;q=0, application/json", "application/json"),
        ("text/html", "application/json"),
    ],
)
def test_accept_negotiation(client, accept, mimetype):
    headers = {"Accept": accept} if accept else {}
    r = client.post(PARSE, data=images.png(), content_type="image/png", headers=headers)
    assert r.status_code == 200
    assert r.mimetype == mimetype
    assert "Accept" in r.headers["Vary"]


def test_explicit_output_wins_over_accept(client):
    r = client.post(
        PARSE + "?output=json",
        data=images.png(),
        content_type="image/png",
        headers={"Accept": "image/png"},
    )
    assert r.mimetype == "application/json"
    r = client.post(
        PARSE + "?output=overlay&format=webp",
        data=images.png(),
        content_type="image/png",
        headers={"Accept": "application/json"},
    )
    assert r.mimetype == "image/webp"


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_overlay_image(client, fmt):
    r = client.post(
        f"{PARSE}?output=overlay&format={fmt}",
        data=images.jpeg(160, 120),
        content_type="image/jpeg",
    )
    assert r.status_code == 200
    assert r.mimetype == f"image/{fmt}"
    image = images.decode(r.data)
    assert image.format == fmt.upper()
    assert image.size == (160, 120)
    assert (r.headers["X-Image-Width"], r.headers["X-Image-Height"]) == ("160", "120")
    assert int(r.headers["X-Persons"]) >= 0
    assert not image.info.get("exif")


def test_overlay_alpha_zero_is_the_photo(client):
    photo = images.pixels(128, 96)
    r = client.post(
        PARSE + "?output=overlay&alpha=0",
        data=images.encode(photo, "PNG"),
        content_type="image/png",
    )
    overlay = np.asarray(images.decode(r.data).convert("RGB"))
    assert np.abs(overlay.astype(int) - photo.astype(int)).max() <= 1


def test_cutout_is_opaque_exactly_on_the_classes(client):
    body = client.post(
        PARSE + "?output=json", data=images.png(), content_type="image/png"
    ).get_json()
    label_map = np.asarray(images.decode(base64.b64decode(body["label_map"]["data"])))
    present = [c["id"] for c in body["classes"] if c["id"] != 0]
    assert present, "the tiny model should find some parts"
    chosen = present[:2]
    query = ",".join(map(str, chosen))
    r = client.post(
        f"{PARSE}?output=cutout&classes={query}", data=images.png(), content_type="image/png"
    )
    assert r.status_code == 200 and r.mimetype == "image/png"
    cutout = np.asarray(images.decode(r.data))
    assert cutout.shape == (96, 128, 4)
    np.testing.assert_array_equal(cutout[..., 3] > 0, np.isin(label_map, chosen))
    # Without classes: every part of every person, the background transparent.
    r = client.post(f"{PARSE}?output=cutout", data=images.png(), content_type="image/png")
    alpha = np.asarray(images.decode(r.data))[..., 3]
    np.testing.assert_array_equal(alpha > 0, label_map > 0)


@pytest.mark.parametrize(
    "query",
    [
        "output=xml",
        "format=jpeg",
        "alpha=2",
        "alpha=-0.1",
        "alpha=nan",
        "alpha=half",
        "instances=maybe",
        "person_masks=maybe",
        "mask_format=svg",
        "include_overlay=perhaps",
        "classes=20",
        "classes=a",
        "classes=",
        "classes=1,,2",
        "classes=%C2%B2",
        "ouput=json",
        "output=json&output=overlay",
    ],
)
def test_invalid_options_are_400_naming_the_parameter(client, query):
    r = client.post(f"{PARSE}?{query}", data=images.png(), content_type="image/png")
    error = assert_error(r, 400)
    name = query.split("=")[0]
    assert name in error["message"]


def test_options_are_checked_before_the_body_is_read(client):
    # A bad option with a bad body: the option error comes first, nothing is decoded.
    r = client.post(f"{PARSE}?alpha=9", data=images.TEXT, content_type="image/png")
    assert_error(r, 400)


# --- the JSON result -------------------------------------------------------------------------


def test_json_result_shape(client):
    r = client.post(PARSE + "?output=json", data=images.png(), content_type="image/png")
    body = r.get_json()
    assert list(body)[:2] == ["request_id", "image"]
    assert set(body) == {"request_id", "image", "classes", "persons", "label_map", "timing_ms"}
    assert body["request_id"] == r.headers["X-Request-ID"]
    assert set(body["timing_ms"]) == {"decode", "queue", "inference", "render", "total"}
    assert all(v >= 0 for v in body["timing_ms"].values())
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"]
    assert body["timing_ms"]["inference"] >= body["timing_ms"]["queue"]
    for stat in body["classes"]:
        assert set(stat) == {"id", "key", "name", "color", "pixels", "fraction"}
        assert stat["name"] == CLASS_NAMES[stat["id"]]
    assert abs(sum(c["fraction"] for c in body["classes"]) - 1.0) < 1e-6
    label_map = images.decode(base64.b64decode(body["label_map"]["data"]))
    assert body["label_map"]["format"] == "png"
    assert label_map.size == (128, 96)
    assert body["persons"], "the tiny model finds persons"
    for person in body["persons"]:
        assert {"id", "score", "bbox", "parts", "mask"} <= set(person)
        assert person["mask"]["format"] == "rle"
        assert len(person["bbox"]) == 4
    assert int(r.headers["X-Persons"]) == len(body["persons"])
    assert r.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("masks", ["person_masks", "instances"])  # the name, the former name
def test_json_masks_png_overlay_and_no_person_masks(client, masks):
    q = f"?output=json&mask_format=png&include_overlay=true&alpha=0.3&{masks}=true"
    body = client.post(PARSE + q, data=images.png(), content_type="image/png").get_json()
    mask = images.decode(base64.b64decode(body["persons"][0]["mask"]["data"]))
    assert mask.size == (128, 96)
    overlay = images.decode(base64.b64decode(body["overlay"]["data"]))
    assert overlay.size == (128, 96)
    body = client.post(
        PARSE + f"?output=json&{masks}=false", data=images.png(), content_type="image/png"
    ).get_json()
    assert body["persons"] and all("mask" not in p for p in body["persons"])
    assert "overlay" not in body


def test_person_masks_and_its_former_name_together_are_400(client):
    for query in ("person_masks=true&instances=false", "instances=true&person_masks=true"):
        r = client.post(f"{PARSE}?output=json&{query}", data=images.png(), content_type="image/png")
        message = assert_error(r, 400, "bad_request")["message"]
        assert "person_masks" in message and "instances" in message


def test_classes_legend(client):
    r = client.get("/api/v1/classes")
    assert r.status_code == 200
    classes = r.get_json()["classes"]
    assert [c["id"] for c in classes] == list(range(20))
    assert [c["name"] for c in classes] == list(CLASS_NAMES)
    assert all(len(c["color"]) == 7 and c["color"].startswith("#") for c in classes)


def test_json_errors_under_api_and_elsewhere(client):
    assert_error(client.get("/api/v1/nothing"), 404, "not_found")
    assert_error(client.get("/nothing"), 404, "not_found")
    r = client.get(PARSE)
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]
    assert_error(client.post("/api/v1/classes"), 405, "method_not_allowed")


def test_responses_never_reveal_internals(client):
    bodies = [
        client.post(PARSE, data=images.TEXT, content_type="image/png").get_data(as_text=True),
        client.get("/readyz").get_data(as_text=True),
        client.get("/api/v1/openapi.json").get_data(as_text=True),
    ]
    # The checkout's path wherever it is cloned, resolved or not (a symlinked checkout), and
    # as the code was imported from (what a traceback would print).
    imported_from = Path(web.__file__).parents[1]
    repo_paths = {str(p) for p in (REPO, REPO.resolve(), imported_from, imported_from.resolve())}
    for text in bodies:
        for secret in ("Traceback", "/work/", "pytorch_model", "torch", "gunicorn", *repo_paths):
            assert secret not in text


def test_json_bodies_are_valid_json(client):
    r = client.post(PARSE + "?output=json", data=images.webp(), content_type="image/webp")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.mimetype == "application/json"
    json.loads(r.get_data(as_text=True))


# ----------------------------------------------------------- malformed bodies (issue 13, 3 and 8)

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


# ------------------------------------------------------------ decode budget (issue 13, item 2)


def test_an_image_whose_decode_exceeds_the_budget_is_413(make_app):
    client = make_app(decode_memory_mb=1, rate_limit="1000 per minute").test_client()
    error = assert_error(client.post(PARSE, **multipart(images.png(1600, 1200))), 413)
    assert "MiB" in error["message"]


def test_no_decode_slot_in_time_is_503_with_retry_after(make_app, monkeypatch):
    from web import service as service_module

    monkeypatch.setattr(service_module, "DECODE_WAIT_S", 0.2)
    app = make_app(decode_slots=1, rate_limit="1000 per minute")
    client = app.test_client()
    budget = app.extensions["m2fp_service"].decode_budget
    assert budget.slots == 1
    with budget.reserve(1, timeout=1):  # another request is decoding
        r = client.post(PARSE, **multipart(images.png()))
    assert_error(r, 503, "overloaded")
    assert int(r.headers["Retry-After"]) >= 1
    assert client.post(PARSE + "?output=json", **multipart(images.png())).status_code == 200
    assert budget.in_use == (0, 0)


# ------------------------------------------------------- decode-cost bombs (issue 13, item 1)


@pytest.mark.parametrize(
    ("build", "mime"),
    [
        (lambda: images.jpeg_scan_bomb(5000), "image/jpeg"),
        (lambda: images.png_chunk_flood(200_000), "image/png"),
        (lambda: images.webp_chunk_flood(200_000), "image/webp"),
    ],
    ids=["jpeg-empty-scans", "png-idat-flood", "webp-chunk-flood"],
)
def test_decode_cost_bombs_are_422_in_milliseconds(client, build, mime):
    data = build()
    started = time.perf_counter()
    r = client.post(PARSE, data=data, content_type=mime)
    assert time.perf_counter() - started < 2.0
    error = assert_error(r, 422)
    assert "too much to decode" in error["message"]


# ----------------------------------------------------- no input path raises (issue 13, item 3)


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


# --- issue 16: classes by name, original size, mattes, layers, label sets ---------------------


def _json(client, query: str = "", data: bytes | None = None) -> dict:
    r = client.post(
        f"{PARSE}?output=json{query}", data=data or images.png(), content_type="image/png"
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def test_classes_by_key_and_by_id_give_the_same_cutout(client):
    by_id = client.post(
        f"{PARSE}?output=cutout&classes=2,5,14", data=images.png(), content_type="image/png"
    )
    by_key = client.post(
        f"{PARSE}?output=cutout&classes=hair,upper_clothes, left_arm",
        data=images.png(),
        content_type="image/png",
    )
    assert by_id.status_code == by_key.status_code == 200
    assert by_id.data == by_key.data
    r = client.post(f"{PARSE}?classes=hairs", data=images.png(), content_type="image/png")
    error = assert_error(r, 400)
    assert "classes" in error["message"] and "'hairs'" in error["message"]


def test_json_carries_keys_and_integer_ids_everywhere(client):
    from m2fp.labels import CLASS_KEYS

    body = _json(client)
    for stat in body["classes"]:
        assert stat["key"] == CLASS_KEYS[stat["id"]]
    legend = client.get("/api/v1/classes").get_json()["classes"]
    assert [c["key"] for c in legend] == list(CLASS_KEYS)
    for person in body["persons"]:
        areas = person["part_areas"]
        assert [a["id"] for a in areas] == person["parts"]
        assert all(type(a["id"]) is int for a in areas)
        assert {str(a["id"]): a["pixels"] for a in areas} == person["part_pixels"]
        for a in areas:
            assert (a["key"], a["name"]) == (CLASS_KEYS[a["id"]], CLASS_NAMES[a["id"]])


def _smooth_photo(width: int = 128, height: int = 96) -> np.ndarray:
    """A gradient with a flat block and no noise: downscaling it changes little, so the model
    sees nearly the same input at both sizes."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // 222], -1)
    photo = rgb.astype(np.uint8)
    photo[20:70, 40:90] = (200, 40, 60)
    return photo


def _label_map(body: dict) -> np.ndarray:
    return np.asarray(images.decode(base64.b64decode(body["label_map"]["data"])))


def test_original_size_in_every_output(make_app):
    client = make_app(max_side=64, rate_limit="1000 per minute").test_client()
    data = images.encode(_smooth_photo(), "PNG")
    for size, (w, h) in [("working", (64, 48)), ("original", (128, 96))]:
        body = _json(client, f"&size={size}&mask_format=png&include_overlay=true", data)
        assert body["image"] == {"width": w, "height": h}
        assert _label_map(body).shape == (h, w)
        assert images.decode(base64.b64decode(body["overlay"]["data"])).size == (w, h)
        for person in body["persons"]:
            assert images.decode(base64.b64decode(person["mask"]["data"])).size == (w, h)
        for output in ("overlay", "cutout", "matte", "psd"):
            query = f"{PARSE}?output={output}&size={size}"
            r = client.post(query, data=data, content_type="image/png")
            assert r.status_code == 200, (output, r.get_data(as_text=True))
            assert (r.headers["X-Image-Width"], r.headers["X-Image-Height"]) == (str(w), str(h))
            assert images.decode(r.data).size == (w, h), output


def test_original_size_masks_line_up_with_the_working_size_ones(make_app):
    client = make_app(max_side=64, rate_limit="1000 per minute").test_client()
    data = images.encode(_smooth_photo(), "PNG")
    working = _label_map(_json(client, "&size=working", data))
    original = _label_map(_json(client, "&size=original", data))
    assert original.shape == (96, 128) and working.shape == (48, 64)
    scaled = working.repeat(2, axis=0).repeat(2, axis=1)
    assert (original == scaled).mean() >= 0.95
    # Where they differ, it is at an edge of the working-size map (within 2 working pixels).
    edge = np.zeros_like(scaled, dtype=bool)
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            shifted = np.roll(scaled, (dy, dx), axis=(0, 1))
            edge |= shifted != scaled
    assert not ((original != scaled) & ~edge).any()
    # Resized probabilities, not a nearest-neighbour blow-up: edges cut through 2x2 blocks.
    blocks = original.reshape(48, 2, 64, 2).transpose(0, 2, 1, 3).reshape(48, 64, 4)
    assert (blocks != blocks[..., :1]).any(axis=-1).sum() > 0


def test_matte_of_classes_and_of_one_person(client):
    body = _json(client, "&mask_format=png")
    label_map = _label_map(body)
    present = [c["id"] for c in body["classes"] if c["id"] != 0]
    query = f"{PARSE}?output=matte&classes={present[0]}"
    r = client.post(query, data=images.png(), content_type="image/png")
    assert r.status_code == 200 and r.mimetype == "image/png"
    matte = images.decode(r.data)
    assert matte.mode == "L"
    matte = np.asarray(matte)
    assert set(np.unique(matte)) <= {0, 255}
    np.testing.assert_array_equal(matte == 255, label_map == present[0])
    person = body["persons"][0]
    mask = np.asarray(images.decode(base64.b64decode(person["mask"]["data"]))) > 0
    r = client.post(f"{PARSE}?output=matte&person=1", data=images.png(), content_type="image/png")
    np.testing.assert_array_equal(np.asarray(images.decode(r.data)) == 255, mask)
    from m2fp.labels import CLASS_KEYS

    query = f"{PARSE}?output=cutout&person=1&classes={CLASS_KEYS[present[0]]}"
    r = client.post(query, data=images.png(), content_type="image/png")
    cutout = np.asarray(images.decode(r.data))
    np.testing.assert_array_equal(cutout[..., 3] > 0, mask & (label_map == present[0]))


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("output=matte&person=0", "person"),
        ("output=matte&person=x", "person"),
        ("size=huge", "size"),
        ("labels=voc", "labels"),
        ("labels=atr&classes=coat", "classes"),
    ],
)
def test_person_size_and_labels_errors_are_400(client, query, needle):
    r = client.post(f"{PARSE}?{query}", data=images.png(), content_type="image/png")
    assert needle in assert_error(r, 400)["message"]


def test_person_is_ignored_by_other_outputs_and_a_missing_person_is_empty(client):
    png = images.png()
    plain = client.post(f"{PARSE}?output=overlay", data=png, content_type="image/png")
    with_person = client.post(
        f"{PARSE}?output=overlay&person=1", data=png, content_type="image/png"
    )
    assert with_person.status_code == 200 and with_person.data == plain.data
    body = client.post(f"{PARSE}?output=json&person=1", data=png, content_type="image/png")
    assert body.status_code == 200 and "persons" in body.get_json()
    found = int(plain.headers["X-Persons"])
    for output in ("matte", "cutout"):
        r = client.post(
            f"{PARSE}?output={output}&person={found + 1}", data=png, content_type="image/png"
        )
        assert r.status_code == 200 and r.headers["X-Persons"] == str(found)
        pixels = np.asarray(images.decode(r.data))
        assert not (pixels if output == "matte" else pixels[..., 3]).any()


def test_gimp_opens_the_layered_file_with_named_layers(client, tmp_path):
    from tests.support import gimp

    body = _json(client)
    r = client.post(f"{PARSE}?output=psd", data=images.png(), content_type="image/png")
    assert r.status_code == 200 and r.mimetype == "image/vnd.adobe.photoshop"
    path = tmp_path / "parse.psd"
    path.write_bytes(r.data)
    size, layers = gimp.load_layers(path, tmp_path)
    assert size == (128, 96)
    names = [name for name, _, _ in layers]
    parts = [c["name"] for c in body["classes"] if c["id"] != 0]
    persons = [f"Person {p['id']}" for p in body["persons"]]
    assert names == ["Photo", *parts, *persons]
    assert layers[0] == ("Photo", 128, 96)
    for (name, width, height), person in zip(
        layers[len(parts) + 1 :], body["persons"], strict=True
    ):
        assert (width, height) == tuple(person["bbox"][2:]), name


@pytest.mark.parametrize(("name", "size"), [("cihp", 20), ("lip", 20), ("atr", 18), ("coarse", 7)])
def test_legend_follows_the_label_set(client, name, size):
    from m2fp.labelsets import LABEL_SETS

    r = client.get(f"/api/v1/classes?labels={name}")
    assert r.status_code == 200
    classes = r.get_json()["classes"]
    assert [c["id"] for c in classes] == list(range(size))
    assert [c["key"] for c in classes] == list(LABEL_SETS[name].keys)
    assert_error(client.get("/api/v1/classes?labels=voc"), 400)


def test_every_output_follows_the_label_set(client):
    from m2fp.labelsets import COARSE

    cihp = _json(client, "&mask_format=png")
    coarse = _json(client, "&mask_format=png&labels=coarse")
    cihp_map, coarse_map = _label_map(cihp), _label_map(coarse)
    np.testing.assert_array_equal(coarse_map, COARSE.remap(cihp_map))
    for stat in coarse["classes"]:
        assert (stat["key"], stat["name"]) == (COARSE.keys[stat["id"]], COARSE.names[stat["id"]])
        assert stat["pixels"] == int((coarse_map == stat["id"]).sum())
    for before, after in zip(cihp["persons"], coarse["persons"], strict=True):
        assert after["part_areas"] == [
            {"id": k, "key": COARSE.keys[k], "name": COARSE.names[k], "pixels": n}
            for k, n in COARSE.remap_counts(
                {a["id"]: a["pixels"] for a in before["part_areas"]}
            ).items()
            if k > 0
        ]
    skin = COARSE.cihp_ids([COARSE.class_id("skin")])
    assert np.isin(cihp_map, skin).any(), "the tiny model finds legs"
    r = client.post(
        f"{PARSE}?output=matte&labels=coarse&classes=skin",
        data=images.png(),
        content_type="image/png",
    )
    np.testing.assert_array_equal(np.asarray(images.decode(r.data)) == 255, np.isin(cihp_map, skin))
    for output in ("overlay", "cutout", "psd"):
        r = client.post(
            f"{PARSE}?output={output}&labels=atr", data=images.png(), content_type="image/png"
        )
        assert r.status_code == 200, output


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


def test_classes_schema_pattern_matches_what_the_parser_takes(client):
    import re

    from m2fp.labelsets import CIHP, LABEL_SETS

    operation = client.get("/api/v1/openapi.json").get_json()["paths"][PARSE]["post"]
    (param,) = [p for p in operation["parameters"] if p["name"] == "classes"]
    pattern = re.compile(param["schema"]["pattern"])
    for name, labels in LABEL_SETS.items():
        value = ",".join([*labels.keys, *map(str, range(len(labels)))])
        assert pattern.fullmatch(value), name
        r = client.post(
            f"{PARSE}?output=matte&labels={name}&classes={value}",
            data=images.png(),
            content_type="image/png",
        )
        assert r.status_code == 200, r.get_data(as_text=True)
    for refused in ("20", "hairs", "Hair", "left-arm", "", "1,,2"):
        assert not pattern.fullmatch(refused), refused
        with pytest.raises(KeyError):
            [CIHP.class_id(token) for token in refused.split(",")]
