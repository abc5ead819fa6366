"""The OpenAPI document is valid OpenAPI 3.1 and describes exactly the real routes."""

from __future__ import annotations

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
