"""`http_contract`, the one source of what nginx and the app must agree on, and proof that each
side sends what it says: the error list against the app's exceptions and werkzeug's errors,
nginx's own error pages and docs/api.md; the body cap and the security headers nginx renders
against the app's. (The OpenAPI document's errors: tests/web/test_openapi.py.)"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from werkzeug.exceptions import default_exceptions

import security.errors
from http_contract import (
    API_CSP,
    ERROR_CODES,
    ERRORS,
    FORM_OVERHEAD,
    ErrorKind,
    generic_error,
    json_body_allowance,
    permissions_policy,
    upload_bytes_for_body,
    upload_limit_message,
)
from nginx.render import EDGE_ERRORS, NginxOptions, RenderError, error_body, render
from security.headers import security_headers
from tests.support import images
from tests.support.paths import REPO
from tests.support.servers import RedisServer

PARSE = "/api/v1/parse"


def nginx_conf(tmp_path: Path, **options: object) -> str:
    return render(
        NginxOptions(runtime_dir=tmp_path, cert=tmp_path / "c.pem", key=tmp_path / "k.pem")
        if not options
        else NginxOptions(
            runtime_dir=tmp_path, cert=tmp_path / "c.pem", key=tmp_path / "k.pem", **options
        )
    )


def error_locations(conf: str) -> dict[str, str]:
    """`location = /__errors/name { ... }` blocks of the rendered nginx.conf, by name."""
    return dict(re.findall(r"location = /__errors/(\w+) \{\n(.*?)\n        \}", conf, re.S))


def added_headers(block: str) -> dict[str, str]:
    return {
        name: value.strip('"')
        for name, value in re.findall(r"add_header (\S+) (\"[^\"]*\"|\S+) always;", block)
    }


# -- the list itself ----------------------------------------------------------------------------


def test_every_code_is_unique_and_every_status_has_one_generic_name():
    assert len(ERROR_CODES) == len(ERRORS)
    statuses = {kind.status for kind in ERRORS}
    for status in statuses:
        assert 400 <= status < 600
        generic = [kind for kind in ERRORS if kind.status == status and kind.generic]
        assert len(generic) <= 1, status
    # a status with one kind names the bare status too, except 422 (werkzeug's 422 is not
    # about images)
    assert {s for s in statuses if generic_error(s) is None} == {422}
    for kind in ERRORS:
        assert re.fullmatch(r"[a-z_]+", kind.code)
        assert kind.message.endswith(".") and "'" not in kind.message


def service_errors() -> list[type[security.errors.ServiceError]]:
    return [
        cls
        for cls in vars(security.errors).values()
        if isinstance(cls, type) and issubclass(cls, security.errors.ServiceError)
    ]


@pytest.mark.parametrize("cls", service_errors(), ids=lambda cls: cls.__name__)
def test_service_errors_take_status_code_and_message_from_the_list(cls):
    kind = ERROR_CODES[cls.code]
    assert (cls.status, cls.code, cls.message) == (kind.status, kind.code, kind.message)
    assert cls().message == kind.message and cls("detail").message == "detail"


def test_every_code_is_sent_by_someone():
    """Each kind is raised by the app (a ServiceError), names a bare status (werkzeug's and
    nginx's own errors), or both: nothing in the list is dead."""
    raised = {cls.code for cls in service_errors()}
    named = {kind.code for kind in ERRORS if kind.generic}
    assert raised | named == set(ERROR_CODES)


@pytest.mark.parametrize("status", sorted(set(default_exceptions) & {k.status for k in ERRORS}))
def test_the_app_names_werkzeugs_errors_from_the_list(app, status):
    """A bare HTTP error (404, 405, 413 from MAX_CONTENT_LENGTH, 429 from flask-limiter...)
    goes out as the list's generic kind of its status."""
    kind = generic_error(status)
    with app.test_request_context("/api/v1/anything"):
        response = app.handle_user_exception(default_exceptions[status]())
    expected = (
        (f"http_{status}", "The request failed.") if kind is None else (kind.code, kind.message)
    )
    assert response.status_code == status
    assert tuple(response.get_json()["error"][k] for k in ("code", "message")) == expected


def test_storage_down_is_one_code_for_readyz_and_parse(make_app, tmp_path, capfd):
    """One cause, one answer: /readyz used to say `overloaded` where a parse said
    `unavailable` for the same unreachable rate-limit storage."""
    redis = RedisServer(tmp_path)
    try:
        client = make_app(ratelimit_storage=redis.url).test_client()
        assert client.get("/readyz").status_code == 200
    finally:
        redis.stop()
    capfd.readouterr()
    ready = client.get("/readyz")
    # the reason is in the operator log (stderr), not in the answer
    assert "rate-limit storage unreachable" in capfd.readouterr().err
    parsed = client.post(PARSE, data=images.png(), content_type="image/png")
    for r in (ready, parsed):
        assert r.status_code == 503
        assert r.get_json()["error"]["code"] == "unavailable"
        assert r.get_json()["error"]["message"] == ERROR_CODES["unavailable"].message
        assert r.headers["Retry-After"] == str(ERROR_CODES["unavailable"].retry_after)


def test_docs_error_table_is_the_list():
    text = (REPO / "docs" / "api.md").read_text()
    table = text[text.index("\n## Errors") :]
    table = table[: table.index("\n## ", 1)]
    rows = set(re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", table, re.M))
    assert rows == {(str(kind.status), kind.code) for kind in ERRORS}


# -- nginx's own error pages --------------------------------------------------------------------


def test_nginx_error_pages_are_the_list(tmp_path):
    conf = nginx_conf(tmp_path, max_body_bytes=json_body_allowance(10 * 1024 * 1024))
    locations = error_locations(conf)
    for status, also in EDGE_ERRORS:
        kind = generic_error(status)
        assert kind is not None
        caught = " ".join(map(str, (status, *also)))
        assert f"error_page {caught} = /__errors/{kind.code};" in conf
        block = locations[kind.code]
        body = re.search(rf"return {status} '(.*)';", block).group(1)
        sent = json.loads(body.replace("$request_id", "6f1c2d4e"))
        limit = "The image is larger than the upload limit of 10 MB."  # docs/api.md's words
        message = kind.message if status != 413 else limit
        assert sent == {"error": {"code": kind.code, "message": message, "request_id": "6f1c2d4e"}}
        retry = added_headers(block).get("Retry-After")
        assert retry == (None if kind.retry_after is None else str(kind.retry_after))
    assert set(locations) == {generic_error(status).code for status, _ in EDGE_ERRORS}


def test_an_error_message_nginx_cannot_quote_is_refused():
    for message in ("It's down.", "Costs $5.", 'Say "hi" \\ bye.'):
        with pytest.raises(RenderError, match="cannot go into nginx.conf"):
            error_body(ErrorKind(500, "internal_error", message), None)


def test_nginx_and_the_app_send_the_same_413_for_a_body_over_the_cap(make_app, tmp_path):
    settings_mb = 0.05
    app = make_app(max_upload_mb=settings_mb)
    cap = json_body_allowance(app.extensions["m2fp_settings"].max_upload_bytes)
    conf = nginx_conf(tmp_path, max_body_bytes=cap)
    nginx_413 = re.search(r"return 413 '(.*)';", error_locations(conf)["payload_too_large"])
    over = app.test_client().post(PARSE, data=b" " * (cap + 1), content_type="application/json")
    assert over.status_code == 413
    sent = json.loads(
        nginx_413.group(1).replace("$request_id", over.get_json()["error"]["request_id"])
    )
    assert sent == over.get_json()


@pytest.mark.parametrize("max_bytes", [1, 51_200, 1_572_864, 10 * 1024 * 1024, 39_321_600])
def test_nginx_states_the_image_cap_behind_its_body_cap(max_bytes):
    """nginx knows only its body cap; the image cap it names in its 413 is the one the app
    was configured with, to within two bytes, and reads the same."""
    recovered = upload_bytes_for_body(json_body_allowance(max_bytes))
    assert max_bytes <= recovered <= max_bytes + 2
    assert upload_limit_message(recovered) == upload_limit_message(max_bytes)


# -- body cap -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mb", ["0.05", "2", "10", "37.5"])
def test_nginx_body_cap_is_the_apps_largest_body(make_app, tmp_path, monkeypatch, mb):
    """nginx's default cap (from M2FP_MAX_UPLOAD_MB) is the app's JSON allowance for the same
    setting, above its multipart/raw cap (MAX_CONTENT_LENGTH); the app takes a JSON body of
    exactly that size and refuses one byte more."""
    monkeypatch.setenv("M2FP_MAX_UPLOAD_MB", mb)
    options = NginxOptions(runtime_dir=tmp_path, cert=tmp_path / "c.pem", key=tmp_path / "k.pem")
    app = make_app(max_upload_mb=float(mb))
    max_bytes = app.extensions["m2fp_settings"].max_upload_bytes
    assert options.max_body_bytes == json_body_allowance(max_bytes)
    assert f"client_max_body_size {options.max_body_bytes};" in render(options)
    assert app.config["MAX_CONTENT_LENGTH"] == max_bytes + FORM_OVERHEAD < options.max_body_bytes
    if float(mb) > 1:
        return  # the app's own check of a JSON body: once, at a small cap
    image = base64.b64encode(images.png()).decode()
    body = json.dumps({"image": image}).encode()
    at_cap = body + b" " * (options.max_body_bytes - len(body))
    client = app.test_client()
    ok = client.post(PARSE + "?output=json", data=at_cap, content_type="application/json")
    assert ok.status_code == 200, ok.get_data(as_text=True)
    over = client.post(PARSE, data=at_cap + b" ", content_type="application/json")
    assert over.status_code == 413


# -- security headers ---------------------------------------------------------------------------


def test_nginx_error_pages_send_the_apps_headers(client, tmp_path):
    """The headers of nginx's own errors == the app's on its own JSON error (CSP and
    Permissions-Policy above all), plus HSTS, which is nginx's alone."""
    app_error = client.get("/api/v1/missing")
    assert app_error.status_code == 404
    app_headers = {
        name: app_error.headers[name] for name in security_headers("/api/v1/missing", "x")
    }
    assert app_headers["Content-Security-Policy"] == API_CSP
    assert app_headers["Permissions-Policy"] == permissions_policy(camera=False)
    conf = nginx_conf(tmp_path)
    for code, block in error_locations(conf).items():
        sent = added_headers(block)
        assert sent.pop("Strict-Transport-Security").startswith("max-age=")
        sent.pop("X-Request-ID")
        sent.pop("Retry-After", None)
        assert sent == app_headers, code


def test_nginx_static_files_send_the_apps_headers(client, tmp_path):
    """Static files: the app's headers for /static/ (which leave caching alone), with nginx's
    `Cache-Control: no-cache` so a new deployment's scripts are picked up."""
    static = next((REPO / "static").rglob("*.js")).relative_to(REPO / "static")
    app_file = client.get(f"/static/{static}")
    assert app_file.status_code == 200
    names = security_headers(f"/static/{static}", app_file.mimetype)
    app_headers = {name: app_file.headers[name] for name in names}
    block = re.search(r"location /static/ \{\n(.*?)\n        \}", nginx_conf(tmp_path), re.S)
    sent = added_headers(block.group(1))
    assert sent.pop("Strict-Transport-Security").startswith("max-age=")
    assert sent.pop("Cache-Control") == "no-cache" and sent.pop("X-Request-ID") == "$request_id"
    # the app sends its files with the API's CSP: nothing in a script or style file runs as a page
    assert sent == app_headers
