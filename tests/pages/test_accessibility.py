"""WCAG 2.1 AA, measured: axe-core in real headless Chromium against the real app, on `/` and
`/kiosk`, in the light and the dark colour scheme, at desktop and phone sizes (and the kiosk's
portrait 1080×1920), before and after a result. No serious or critical violation may remain."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright

from tests.support.axe import assert_accessible
from tests.support.images import photo
from tests.support.pages import (
    DESKTOP,
    PHONE,
    assert_clean,
    browser_context,
    launch,
    make_app,
    open_page,
    serve,
    shoot,
    take_photo,
    wait_until,
)

pytestmark = pytest.mark.browser

KIOSK = {"width": 1080, "height": 1920}
SIZES = {"desktop": DESKTOP, "phone": PHONE}


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with serve(make_app(tiny_model_dir, kiosk_idle_seconds=120)) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = launch(p, camera=True)
        yield chromium
        chromium.close()


def parse_on_index(page) -> None:
    with page.expect_response(lambda r: "/api/v1/parse" in r.url) as answer:
        page.set_input_files(
            "#file-input",
            files=[{"name": "p.png", "mimeType": "image/png", "buffer": photo(480, 360)}],
        )
    assert answer.value.status == 200
    wait_until(page, "() => document.querySelector('#busy').hidden")
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_index_has_no_serious_violation(server, browser, scheme, size):
    with browser_context(browser, viewport=SIZES[size], color_scheme=scheme) as ctx:
        page, log = open_page(ctx, server.url + "/")
        assert_accessible(page, f"/ empty, {size}, {scheme}")
        parse_on_index(page)
        assert_accessible(page, f"/ with a result, {size}, {scheme}")
        shoot(page, f"a11y-index-{size}-{scheme}-result")
        assert_clean(page, log)


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone", "kiosk"])
def test_kiosk_has_no_serious_violation(server, browser, scheme, size):
    viewport = KIOSK if size == "kiosk" else SIZES[size]
    with browser_context(browser, viewport=viewport, color_scheme=scheme) as ctx:
        page, log = open_page(ctx, server.url + "/kiosk")
        assert_accessible(page, f"/kiosk welcome, {size}, {scheme}")
        take_photo(page)
        assert_accessible(page, f"/kiosk result, {size}, {scheme}")
        shoot(page, f"a11y-kiosk-{size}-{scheme}-result")
        assert_clean(page, log)
