"""Security headers on every response (errors included), CORS, request ids, ProxyFix."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from security.headers import API_CSP, PAGE_CSP, security_headers
from tests.support import images

PARSE = "/api/v1/parse"


def responses(client):
    """One response of every kind: result, each error family, pages, ops endpoints."""
    return {
        "overlay": client.post(
            PARSE + "?output=overlay", data=images.png(), content_type="image/png"
        ),
        "json": client.post(PARSE + "?output=json", data=images.png(), content_type="image/png"),
        "415": client.post(PARSE, data=images.TEXT, content_type="image/png"),
        "400": client.post(PARSE + "?alpha=7", data=images.png(), content_type="image/png"),
        "404": client.get("/api/v1/missing"),
        "404-page": client.get("/missing"),
        "405": client.get(PARSE),
        "classes": client.get("/api/v1/classes"),
        "openapi": client.get("/api/v1/openapi.json"),
        "healthz": client.get("/healthz"),
        "readyz": client.get("/readyz"),
        "metrics": client.get("/metrics"),
        "index": client.get("/"),
        "kiosk": client.get("/kiosk"),
    }


def test_headers_on_every_response(client):
    for name, r in responses(client).items():
        h = r.headers
        assert h["X-Content-Type-Options"] == "nosniff", name
        assert h["Referrer-Policy"] == "no-referrer", name
        assert h["Cross-Origin-Opener-Policy"] == "same-origin", name
        assert h["Cross-Origin-Resource-Policy"] == "same-origin", name
        assert h["X-Frame-Options"] == "DENY", name
        assert "frame-ancestors 'none'" in h["Content-Security-Policy"], name
        assert h["Cache-Control"] == "no-store", name
        assert re.fullmatch(r"[0-9a-f]{32}", h["X-Request-ID"]), name
        assert "Server" not in h, name
        camera = "camera=(self)" if name == "kiosk" else "camera=()"
        assert camera in h["Permissions-Policy"].split(", "), name
        assert "microphone=()" in h["Permissions-Policy"], name
        expected_csp = PAGE_CSP if name in ("index", "kiosk") else API_CSP
        assert h["Content-Security-Policy"] == expected_csp, name


@pytest.mark.parametrize("csp", [PAGE_CSP, API_CSP])
def test_csp_has_no_inline_code_and_no_third_party_origins(csp):
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "http:" not in csp and "https:" not in csp and "*" not in csp
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"


def test_page_csp_allows_results_as_blob_and_data_images():
    directives = dict(d.strip().split(" ", 1) for d in PAGE_CSP.split(";"))
    assert directives["img-src"] == "'self' blob: data:"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"


def test_static_files_keep_their_own_caching():
    assert "Cache-Control" not in security_headers("/static/app.js", "text/javascript")
    assert (
        security_headers("/kiosk/", "text/html")["Permissions-Policy"].count("camera=(self)") == 1
    )


class _InlineFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("<style>")
        if "style" in names or any(name.startswith("on") for name in names):
            self.problems.append(f"inline attribute on <{tag}>")
        for name, value in attrs:
            if name in ("src", "href") and value and re.match(r"(https?:)?//", value):
                self.problems.append(f"third-party {name}={value}")


@pytest.mark.parametrize("page", ["/", "/kiosk"])
def test_pages_have_no_inline_code(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.mimetype == "text/html"
    finder = _InlineFinder()
    finder.feed(r.get_data(as_text=True))
    assert finder.problems == []


def test_kiosk_page_gets_its_settings(make_app):
    app = make_app(kiosk_notice="Nothing is kept.", kiosk_idle_seconds=42)
    text = app.test_client().get("/kiosk").get_data(as_text=True)
    assert "Nothing is kept." in text and "42" in text


# --- CORS ------------------------------------------------------------------------------------


def test_cors_closed_by_default(client):
    r = client.post(
        PARSE,
        data=images.png(),
        content_type="image/png",
        headers={"Origin": "https://elsewhere.example"},
    )
    assert r.status_code == 200
    assert "Access-Control-Allow-Origin" not in r.headers
    pre = client.options(
        PARSE,
        headers={
            "Origin": "https://elsewhere.example",
            "Access-Control-Request-Method": "POST",
        },
    )
    assert "Access-Control-Allow-Origin" not in pre.headers


def test_cors_open_to_configured_origins_only(make_app):
    app = make_app(cors_origins=("https://editor.example",), rate_limit="100 per minute")
    client = app.test_client()
    allowed = {"Origin": "https://editor.example"}
    r = client.post(PARSE, data=images.png(), content_type="image/png", headers=allowed)
    assert r.headers["Access-Control-Allow-Origin"] == "https://editor.example"
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "retry-after", "x-image-width"} <= exposed
    assert "Access-Control-Allow-Credentials" not in r.headers
    pre = client.options(
        PARSE,
        headers={
            **allowed,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["Access-Control-Allow-Origin"] == "https://editor.example"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    # Errors carry CORS too, so the calling page can read them.
    err = client.post(PARSE, data=images.TEXT, content_type="image/png", headers=allowed)
    assert err.status_code == 415
    assert err.headers["Access-Control-Allow-Origin"] == "https://editor.example"
    other = client.post(
        PARSE,
        data=images.png(),
        content_type="image/png",
        headers={"Origin": "https://evil.example"},
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    # Pages are never opened to other origins.
    page = client.get("/", headers=allowed)
    assert "Access-Control-Allow-Origin" not in page.headers


# --- request ids and proxies -----------------------------------------------------------------


@pytest.mark.parametrize("incoming", ["0123456789abcdef0123456789abcdef", "req-42.a:b_c"])
def test_sane_request_id_is_kept(client, incoming):
    r = client.get("/healthz", headers={"X-Request-ID": incoming})
    assert r.headers["X-Request-ID"] == incoming


@pytest.mark.parametrize(
    "incoming", ["", "has space", "x" * 200, "<script>", "-leading-dash", "a\u00e9"]
)
def test_insane_request_id_is_replaced(client, incoming):
    r = client.get("/healthz", headers={"X-Request-ID": incoming})
    assert r.headers["X-Request-ID"] != incoming
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])
