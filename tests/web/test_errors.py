"""web/errors.py: every error is the JSON of the contract, werkzeug's included, and an
unexpected one is a 500 carrying only the request id."""

from __future__ import annotations

from pathlib import Path

import web
from tests.support import images
from tests.support.api import PARSE, assert_error, parse
from tests.support.model_factory import make_tiny_model
from tests.support.paths import REPO


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


def test_unexpected_error_is_500_with_only_the_request_id(make_app, capfd):
    model = make_tiny_model()
    secret = "SECRET-LOCAL-VALUE"

    def broken(images, **kwargs):
        local_with_secret = secret  # a local variable that must not reach any log
        raise RuntimeError("boom in forward " + str(len(local_with_secret)))

    model.forward = broken
    client = make_app(model=model).test_client()
    capfd.readouterr()
    r = parse(client)
    assert r.status_code == 500
    assert r.get_json() == {
        "error": {
            "code": "internal_error",
            "message": "The server could not complete the request.",
            "request_id": r.headers["X-Request-ID"],
        }
    }
    out, err = capfd.readouterr()
    assert "Traceback" in err and "boom in forward" in err
    assert r.headers["X-Request-ID"] in err
    assert secret not in out + err
    assert "boom" not in r.get_data(as_text=True)
