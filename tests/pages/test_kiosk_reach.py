"""The kiosk (`/kiosk`) at arm's length: it waits for a parse as long as the server
may take, the photo is not mirrored though the preview is, text is large and the actions are in
reach on a 1080×1920 portrait screen, the shutter has a name, plurals read right. Real headless
Chromium with its fake camera, against the real app; screenshots in artifacts/screenshots/."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.pages.test_kiosk import browser  # noqa: F401  (the fake camera's browser fixture)
from tests.support.pages import (
    assert_clean,
    browser_context,
    canvas_pixels,
    make_app,
    open_page,
    serve,
    shoot,
    wait_screen,
    wait_until,
)
from web.pages import PARSE_TIMEOUT_SECONDS
from web.service import ENGINE_TIMEOUT_S

pytestmark = pytest.mark.browser

PORTRAIT = {"width": 1080, "height": 1920}
FRAME = "() => new Promise((r) => requestAnimationFrame(() => r()))"

# A camera whose picture is red on its left half and blue on its right.
SPLIT_CAMERA = """
(() => {
  const media = navigator.mediaDevices;
  media.getUserMedia = async () => {
    const canvas = document.createElement("canvas");
    canvas.width = 640;
    canvas.height = 480;
    const ctx = canvas.getContext("2d");
    const paint = () => {
      ctx.fillStyle = "rgb(220, 20, 20)";
      ctx.fillRect(0, 0, 320, 480);
      ctx.fillStyle = "rgb(20, 20, 220)";
      ctx.fillRect(320, 0, 320, 480);
    };
    paint();
    setInterval(paint, 50);
    return canvas.captureStream(20);
  };
})();
"""


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with serve(make_app(tiny_model_dir, kiosk_idle_seconds=60)) as live:
        yield live


def font_px(page, selector: str) -> float:
    return page.evaluate(
        "(s) => parseFloat(getComputedStyle(document.querySelector(s)).fontSize)", selector
    )


def test_kiosk_waits_at_least_as_long_as_the_server(server, browser):  # noqa: F811
    assert PARSE_TIMEOUT_SECONDS >= ENGINE_TIMEOUT_S
    with browser_context(browser, viewport=PORTRAIT) as ctx:
        page, log = open_page(ctx, server.url + "/kiosk")
        page.clock.install()
        held = []
        page.route("**/api/v1/parse*", lambda route: held.append(route))
        page.click("#start")
        wait_until(page, "() => document.querySelector('#video').videoWidth > 0")
        page.click("#shutter")
        for _ in range(4):  # the countdown's seconds, on the page's clock
            page.clock.run_for(1000)
        for _ in range(200):  # the route handler runs here, in Python, once the upload starts
            if held:
                break
            page.wait_for_timeout(50)
        assert held, "the kiosk sent the photo"
        wait_screen(page, "working")
        # Up to the server's own deadline (and a second), the kiosk keeps waiting.
        page.clock.run_for(int(ENGINE_TIMEOUT_S * 1000) + 1000)
        assert page.evaluate("() => document.querySelector('#kiosk').dataset.state") == "working"
        # Past the page's deadline (the server's plus the margin), it says so.
        page.clock.run_for(int((PARSE_TIMEOUT_SECONDS - ENGINE_TIMEOUT_S) * 1000))
        wait_screen(page, "failure")
        assert page.text_content("#failure-title") == "This took too long."
        assert_clean(page, log)


def test_the_photo_is_not_mirrored_though_the_preview_is(server, browser):  # noqa: F811
    with browser_context(browser, viewport={"width": 1280, "height": 800}) as ctx:
        ctx.add_init_script(SPLIT_CAMERA)
        page, log = open_page(ctx, server.url + "/kiosk")
        page.click("#start")
        wait_until(page, "() => document.querySelector('#video').videoWidth > 0")
        preview = "() => getComputedStyle(document.querySelector('#video')).transform"
        assert page.evaluate(preview) == "matrix(-1, 0, 0, 1, 0, 0)", "the preview is a mirror"
        page.click("#shutter")
        wait_screen(page, "result")
        page.hover("#peek")
        page.mouse.down()  # hold: the bare photo
        page.evaluate(FRAME)
        pixels = canvas_pixels(page, "#result-canvas")[..., :3].astype(np.float64)
        page.mouse.up()
        width = pixels.shape[1]
        left = pixels[:, : width // 4].mean(axis=(0, 1))
        right = pixels[:, -width // 4 :].mean(axis=(0, 1))
        assert left[0] > 150 and left[2] < 80, f"left is red as the camera saw it: {left}"
        assert right[2] > 150 and right[0] < 80, f"right is blue: {right}"
        assert_clean(page, log)


def test_portrait_kiosk_text_size_reach_labels_and_plurals(server, browser):  # noqa: F811
    with browser_context(browser, viewport=PORTRAIT) as ctx:
        page, log = open_page(ctx, server.url + "/kiosk")
        for selector in ("#notice-text", ".welcome-lead"):
            assert font_px(page, selector) >= 22, selector
        shoot(page, "kiosk-portrait-welcome")

        # One person and one kind of part: the real answer, cut down to them.
        def one_of_each(route):
            answer = route.fetch()
            body = answer.json()
            parts = [c for c in body["classes"] if c["id"] != 0][:1]
            body["classes"] = [c for c in body["classes"] if c["id"] == 0] + parts
            body["persons"] = body["persons"][:1] or [
                {"id": 1, "score": 0.9, "bbox": [0, 0, 1, 1], "parts": []}
            ]
            route.fulfill(response=answer, body=json.dumps(body))

        page.route("**/api/v1/parse*", one_of_each)
        page.click("#start")
        wait_until(page, "() => document.querySelector('#video').videoWidth > 0")
        assert font_px(page, ".camera-hint") >= 22
        shutter = page.get_by_role("button", name=re.compile(r"^Take the photo"))
        assert shutter.count() == 1
        shoot(page, "kiosk-portrait-camera")
        page.click("#shutter")
        wait_screen(page, "result")
        page.evaluate(FRAME)
        assert page.text_content("#result-title") == "1 person, 1 kind of part"
        for selector in ("#result-title", ".chip"):
            assert font_px(page, selector) >= 22, selector
        for selector in ("#again", "#peek"):
            box = page.locator(selector).bounding_box()
            assert box["y"] >= 0 and box["y"] + box["height"] <= PORTRAIT["height"], selector
            assert box["height"] >= 64
            reached = page.evaluate(
                """(s) => { const b = document.querySelector(s).getBoundingClientRect();
                            const hit = document.elementFromPoint(b.x + b.width / 2,
                                                                  b.y + b.height / 2);
                            return Boolean(hit && hit.closest(s)); }""",
                selector,
            )
            assert reached, f"{selector} is covered"
        shoot(page, "kiosk-portrait-result")
        assert_clean(page, log)
