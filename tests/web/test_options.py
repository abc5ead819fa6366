"""web/options.py through POST /api/v1/parse: Accept negotiation and the query options
(output, format, alpha, classes, person, size, labels, person_masks) with their 400s."""

from __future__ import annotations

import re

import pytest

from tests.support import images
from tests.support.api import PARSE, assert_error


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


def test_person_masks_and_its_former_name_together_are_400(client):
    for query in ("person_masks=true&instances=false", "instances=true&person_masks=true"):
        r = client.post(f"{PARSE}?output=json&{query}", data=images.png(), content_type="image/png")
        message = assert_error(r, 400, "bad_request")["message"]
        assert "person_masks" in message and "instances" in message


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


def test_classes_schema_pattern_matches_what_the_parser_takes(client):

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
