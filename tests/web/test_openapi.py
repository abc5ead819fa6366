"""The OpenAPI document is valid OpenAPI 3.1 and describes exactly the real routes."""

from __future__ import annotations

import io
import re

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from http_contract import ERRORS
from tests.support import images
from web.options import PARAMETERS

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def test_document_is_valid_openapi_3_1(client):
    r = client.get("/api/v1/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    document = r.get_json()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_document_covers_every_route_and_only_those(app, client):
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    routes = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(m for m in rule.methods if m not in IGNORED_METHODS)
    assert set(paths) == set(routes)
    for path, methods in routes.items():
        assert {m.lower() for m in methods} == set(paths[path]), path


def test_parse_documents_every_option_and_error(client):
    document = client.get("/api/v1/openapi.json").get_json()
    operation = document["paths"]["/api/v1/parse"]["post"]
    assert {p["name"] for p in operation["parameters"]} == set(PARAMETERS)
    assert {"200", "400", "401", "403", "413", "415", "422", "429", "503"} <= set(
        operation["responses"]
    )
    assert {
        "multipart/form-data",
        "application/json",
        "image/png",
        "image/jpeg",
        "image/webp",
    } <= set(operation["requestBody"]["content"])


def _validator(document: dict, name: str) -> OAS31Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return OAS31Validator(schema)


@pytest.mark.parametrize(
    "query",
    [
        "output=json",
        "output=json&mask_format=png&include_overlay=true",
        "instances=false",
        "person_masks=false",
    ],
)
def test_real_responses_match_their_schemas(client, query):
    document = client.get("/api/v1/openapi.json").get_json()
    r = client.post(
        f"/api/v1/parse?{query}",
        data=images.png(),
        content_type="image/png",
        headers={"Accept": "application/json"},
    )
    assert r.status_code == 200
    _validator(document, "ParseResult").validate(r.get_json())
    error = client.post("/api/v1/parse", data=images.TEXT, content_type="image/png")
    _validator(document, "Error").validate(error.get_json())
    for person in r.get_json()["persons"]:
        assert set(person) <= set(document["components"]["schemas"]["Person"]["properties"])


def test_errors_are_the_one_error_list(client):
    """The Error schema's codes and each error response's codes are `http_contract.ERRORS`."""
    document = client.get("/api/v1/openapi.json").get_json()
    code = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    enum = next(option["enum"] for option in code["anyOf"] if "enum" in option)
    assert enum == [kind.code for kind in ERRORS]
    validator = _validator(document, "Error")
    for kind in ERRORS:
        validator.validate({"error": {"code": kind.code, "message": "m", "request_id": "r"}})
    validator.validate({"error": {"code": "http_416", "message": "m", "request_id": "r"}})
    assert not validator.is_valid({"error": {"code": "busy", "message": "m", "request_id": "r"}})
    for name, response in document["components"]["responses"].items():
        status = int(name.removeprefix("E"))
        listed = set(re.findall(r"`([a-z_]+)`", response["description"].split("Codes:")[1]))
        assert listed == {kind.code for kind in ERRORS if kind.status == status}, name


# ------------------------------------------- the constraints say what the validation does


def _parse_operation(client) -> dict:
    return client.get("/api/v1/openapi.json").get_json()["paths"]["/api/v1/parse"]["post"]


def test_every_option_is_constrained(client):
    """Each query option says which values it takes: an enum, a boolean, a range or a
    pattern (what tests/web/test_openapi_fuzz.py then holds the app to)."""
    for parameter in _parse_operation(client)["parameters"]:
        schema = parameter["schema"]
        constrained = (
            "enum" in schema
            or schema.get("type") == "boolean"
            or {"minimum", "maximum"} <= set(schema)
            or "pattern" in schema
        )
        assert constrained, parameter["name"]


def test_the_classes_pattern_allows_only_what_the_options_accept(client):
    from web.options import parse_options

    parameters = {p["name"]: p for p in _parse_operation(client)["parameters"]}
    pattern = re.compile(parameters["classes"]["schema"]["pattern"])
    candidates = [str(i) for i in range(40)] + ["1,19", "19,20", "0,0", "5,", "", "x", "2,3,4"]
    for value in candidates:
        if pattern.search(value):
            assert parse_options({"classes": [value]}).classes is not None, value
    assert {str(i) for i in range(40) if pattern.search(str(i))} == {str(i) for i in range(20)}


def test_request_bodies_say_their_types_and_sizes(make_app):
    client = make_app(max_upload_mb=1).test_client()
    content = _parse_operation(client)["requestBody"]["content"]
    raw = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
    assert set(content) == {"multipart/form-data", "application/json", *raw}
    part = content["multipart/form-data"]["schema"]["properties"]["image"]
    base64_field = content["application/json"]["schema"]["properties"]["image"]
    for schema in [part, base64_field] + [content[mime]["schema"] for mime in raw]:
        assert schema["minLength"] == 1  # an empty image is 400
    for schema in [part] + [content[mime]["schema"] for mime in raw]:
        assert schema["maxLength"] == 1024 * 1024  # more is 413
    assert base64_field["maxLength"] == 1024 * 1024 // 3 * 4  # the same bytes in base64
    assert base64_field["format"] == "byte"
    parts = content["multipart/form-data"]["encoding"]["image"]["contentType"]
    assert set(parts.split(", ")) == set(raw)


def test_every_status_an_operation_can_answer_is_documented(client):
    from web.openapi import ERROR_STATUSES

    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert "500" in operation["responses"], f"{method} {path}"  # any bug: a JSON 500
    assert set(ERROR_STATUSES) | {"200"} == set(_parse_operation(client)["responses"])


def test_an_empty_image_part_is_refused_as_the_schema_says(client):
    """The issue's example: an empty multipart part was schema-valid and a 400."""
    empty = {"image": (io.BytesIO(b""), "a.png", "image/png")}
    r = client.post("/api/v1/parse", data=empty, content_type="multipart/form-data")
    assert r.status_code == 400
    schema = _parse_operation(client)["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert not OAS31Validator(schema).is_valid({"image": ""})
