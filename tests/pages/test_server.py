"""The pages as the server sends them (Flask test client, no browser): settings reach the
scripts through data attributes, nothing inline, every asset local and served with the right
type, and the headers the pages rely on."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from http_contract import size_label
from m2fp.labels import PALETTES_HEX
from tests.support.pages import close_app, make_app
from tests.support.paths import REPO
from web.pages import PARSE_TIMEOUT_SECONDS
from web.service import ENGINE_TIMEOUT_S

STATIC = REPO / "static"


class Collector(HTMLParser):
    """Tags with their attributes, and the text inside <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open = tag if tag in ("script", "style") else None

    def handle_data(self, data):
        if self._open and data.strip():
            self.inline.append(f"<{self._open}>{data.strip()[:60]}")

    def handle_endtag(self, tag):
        self._open = None


def collect(html: str) -> Collector:
    parser = Collector()
    parser.feed(html)
    return parser


@pytest.fixture(scope="module")
def client(tiny_model_dir):
    app = make_app(
        tiny_model_dir,
        max_upload_mb=2.5,
        kiosk_idle_seconds=17,
        kiosk_notice='Photos are <script>alert("x")</script> never "kept".',
    )
    yield app.test_client()
    close_app(app)


def body_attrs(page: Collector) -> dict[str, str | None]:
    return next(attrs for tag, attrs in page.tags if tag == "body")


def test_index_carries_the_upload_cap(client):
    answer = client.get("/")
    assert answer.status_code == 200
    assert answer.mimetype == "text/html"
    page = collect(answer.get_data(as_text=True))
    assert body_attrs(page)["data-max-upload-bytes"] == str(int(2.5 * 1024 * 1024))
    assert 'up to <span id="max-size">2.5 MB</span>' in answer.get_data(as_text=True)


def test_kiosk_carries_idle_time_and_escaped_notice(client):
    answer = client.get("/kiosk")
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    attrs = body_attrs(collect(html))
    assert attrs["data-idle-seconds"] == "17"
    assert attrs["data-countdown-seconds"] == "3"
    assert attrs["data-max-upload-bytes"] == str(int(2.5 * 1024 * 1024))
    assert (
        "Photos are &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; never &#34;kept&#34;." in html
    )


@pytest.mark.parametrize("path", ["/", "/kiosk"])
def test_client_deadline_is_never_shorter_than_the_servers(client, tiny_model_dir, path):
    attrs = body_attrs(collect(client.get(path).get_data(as_text=True)))
    assert int(attrs["data-parse-timeout-seconds"]) == PARSE_TIMEOUT_SECONDS
    assert PARSE_TIMEOUT_SECONDS >= ENGINE_TIMEOUT_S
    # and follows the operator's latency target, never below the edge's wait for the app
    slow = make_app(tiny_model_dir, latency_target_seconds=300)
    try:
        page = slow.test_client().get("/")
        limits = slow.extensions["m2fp_settings"].time_limits
        (given,) = re.findall(r'data-parse-timeout-seconds="(\d+)"', page.get_data(as_text=True))
        assert int(given) > limits.proxy_read_timeout_s > limits.engine_deadline_s >= 300
    finally:
        close_app(slow)


def test_index_carries_the_palettes_and_kiosk_no_file_dialog_by_default(client, tiny_model_dir):
    attrs = body_attrs(collect(client.get("/").get_data(as_text=True)))
    palettes = json.loads(attrs["data-palettes"])
    assert palettes == {name: list(colours) for name, colours in PALETTES_HEX.items()}
    kiosk = client.get("/kiosk").get_data(as_text=True)
    assert body_attrs(collect(kiosk))["data-file-fallback"] == "false"
    assert 'type="file"' not in kiosk
    app = make_app(tiny_model_dir, kiosk_file_fallback=True)
    try:
        enabled = app.test_client().get("/kiosk").get_data(as_text=True)
        assert body_attrs(collect(enabled))["data-file-fallback"] == "true"
        assert 'type="file"' in enabled
    finally:
        close_app(app)


@pytest.mark.parametrize("path", ["/", "/kiosk"])
def test_nothing_inline_and_every_asset_local(client, path):
    html = client.get(path).get_data(as_text=True)
    page = collect(html)
    assert page.inline == [], "no inline script or style"
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts and all(a.get("type") == "module" and a.get("src") for a in scripts)
    for tag, attrs in page.tags:
        assert "style" not in attrs, f"style attribute on <{tag}>"
        handlers = [name for name in attrs if name.startswith("on")]
        assert handlers == [], f"inline handler {handlers} on <{tag}>"
        for name in ("src", "href"):
            url = attrs.get(name)
            if url is None:
                continue
            assert url.startswith(("/", "#")), f"<{tag} {name}={url}> must be local"
            if url.startswith("/static/"):
                served = client.get(url)
                assert served.status_code == 200, url


@pytest.mark.parametrize(
    ("suffix", "mimetype"),
    [(".js", "text/javascript"), (".css", "text/css"), (".svg", "image/svg+xml")],
)
def test_static_files_have_their_types(client, suffix, mimetype):
    files = sorted(STATIC.rglob(f"*{suffix}"))
    assert files
    for path in files:
        answer = client.get("/static/" + path.relative_to(STATIC).as_posix())
        assert answer.status_code == 200
        assert answer.mimetype == mimetype, path


IMPORT = re.compile(r"""^import\s[^"']*["']([^"']+)["'];""", re.MULTILINE)


def test_module_imports_resolve_and_no_string_evaluation():
    for path in sorted((STATIC / "js").glob("*.js")):
        source = path.read_text()
        for target in IMPORT.findall(source):
            assert target.startswith("./"), f"{path.name} imports {target}: only local modules"
            assert (path.parent / target).is_file(), f"{path.name} imports missing {target}"
        for banned in (
            "eval(",
            "new Function",
            "innerHTML",
            "localStorage",
            "indexedDB",
            "serviceWorker",
            "document.write",
            "http://",
            "https://",
        ):
            assert banned not in source, f"{path.name} uses {banned}"


def test_headers_the_pages_rely_on(client):
    index = client.get("/")
    kiosk = client.get("/kiosk")
    for answer in (index, kiosk):
        csp = answer.headers["Content-Security-Policy"]
        directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        img = directives.get("img-src", directives.get("default-src"))
        assert "'self'" in img and "blob:" in img
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "camera=(self)" in kiosk.headers["Permissions-Policy"]
    assert "camera=()" in index.headers["Permissions-Policy"]


@pytest.mark.parametrize(
    ("n_bytes", "label"),
    [(10 * 1024 * 1024, "10 MB"), (int(2.5 * 1024 * 1024), "2.5 MB"), (300 * 1024, "300 KB")],
)
def test_size_label(n_bytes, label):
    assert size_label(n_bytes) == label
