"""POST /api/v1/parse through the Flask test client: what the service does with an image
(decode checks, the outputs and the JSON result); the body forms are in test_inputs.py, the
query options in test_options.py, the error mapping in test_errors.py."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest

from m2fp.labels import CLASS_NAMES
from tests.support import images
from tests.support.api import PARSE, assert_error, multipart


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


def test_truncated_jpeg_is_422(client):
    assert_error(client.post(PARSE, data=images.truncated_jpeg(), content_type="image/jpeg"), 422)


def test_pixel_cap_is_413(client):
    error = assert_error(client.post(PARSE, data=images.png_bomb(), content_type="image/png"), 413)
    assert error["code"] == "payload_too_large"


def test_working_copy_is_downscaled_to_max_side(make_app):
    app = make_app(max_side=64)
    r = app.test_client().post(
        PARSE + "?output=json", data=images.png(128, 96), content_type="image/png"
    )
    assert r.get_json()["image"] == {"width": 64, "height": 48}


# --- the image outputs -----------------------------------------------------------------------


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


def test_classes_legend(client):
    r = client.get("/api/v1/classes")
    assert r.status_code == 200
    classes = r.get_json()["classes"]
    assert [c["id"] for c in classes] == list(range(20))
    assert [c["name"] for c in classes] == list(CLASS_NAMES)
    assert all(len(c["color"]) == 7 and c["color"].startswith("#") for c in classes)


def test_json_bodies_are_valid_json(client):
    r = client.post(PARSE + "?output=json", data=images.webp(), content_type="image/webp")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.mimetype == "application/json"
    json.loads(r.get_data(as_text=True))


# ------------------------------------------------------------ decode budget


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


# ------------------------------------------------------- decode-cost bombs


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


# --- classes by name, original size, mattes, layers, label sets ---------------------


def _json(client, query: str = "", data: bytes | None = None) -> dict:
    r = client.post(
        f"{PARSE}?output=json{query}", data=data or images.png(), content_type="image/png"
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


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
