"""The kiosk page (`/kiosk`) in real headless Chromium with its fake camera, against the real
app and a tiny model: capture, result, idle reset without reload, fallback without a camera."""

from __future__ import annotations

import pytest

from tests.support.images import photo
from tests.support.pages import (
    DESKTOP,
    EMPTY_STORAGE,
    PHONE,
    FileChoosers,
    assert_clean,
    browser_context,
    camera_live,
    canvas_pixels,
    launch,
    leftovers,
    make_app,
    open_page,
    screen,
    serve,
    shoot,
    storage_state,
    take_photo,
    wait_screen,
    wait_until,
)

pytestmark = pytest.mark.browser

IDLE_SECONDS = 4
NOTICE = "Photos are parsed in memory & never kept. This screen wipes itself after 4 seconds."


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    app = make_app(tiny_model_dir, kiosk_idle_seconds=IDLE_SECONDS, kiosk_notice=NOTICE)
    with serve(app) as live:
        yield live


@pytest.fixture(scope="module")
def browser(playwright):
    chromium = launch(playwright, camera=True)
    yield chromium
    chromium.close()


@pytest.mark.parametrize(
    ("name", "viewport", "scale"), [("desktop", DESKTOP, 1), ("phone", PHONE, 2)]
)
def test_capture_from_the_fake_camera_and_show_the_result(server, browser, name, viewport, scale):
    with browser_context(browser, viewport=viewport, device_scale_factor=scale) as ctx:
        page, log = open_page(ctx, server.url + "/kiosk")
        assert screen(page) == "welcome"
        # The configured notice, on the welcome screen (escaping: tests/pages/test_server.py).
        assert page.text_content("#notice-text") == NOTICE
        assert page.is_visible("#notice")
        shoot(page, f"kiosk-{name}-welcome")

        with page.expect_response(lambda r: "/api/v1/parse" in r.url) as response:
            page.click("#start")
            wait_screen(page, "camera")
            wait_until(page, "() => document.querySelector('#video').videoWidth > 0")
            shoot(page, f"kiosk-{name}-camera")
            page.click("#shutter")
            wait_until(page, "() => !document.querySelector('#countdown').hidden")
            shoot(page, f"kiosk-{name}-countdown")
        assert response.value.status == 200
        answer = response.value.json()
        wait_screen(page, "result")
        page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")

        # The camera is off once the photo is taken; the result fills the screen.
        assert page.evaluate("() => document.querySelector('#video').srcObject") is None
        assert leftovers(page)["liveTracks"] == 0
        pixels = canvas_pixels(page, "#result-canvas")
        assert pixels.shape[:2] == (answer["image"]["height"], answer["image"]["width"])
        assert pixels[..., :3].std() > 5, "the result canvas holds a picture"
        box = page.locator("#result-canvas").bounding_box()
        assert (box["width"], box["height"]) == (viewport["width"], viewport["height"])
        chips = page.eval_on_selector_all("#legend li", "(items) => items.length")
        assert chips == len([c for c in answer["classes"] if c["id"] != 0])
        assert page.is_visible("#again")
        box = page.locator("#again").bounding_box()
        assert box["height"] >= 64, "touch targets are large"
        shoot(page, f"kiosk-{name}-result")

        # Holding "see the photo" shows the bare capture; letting go brings the parts back.
        page.hover("#peek")
        page.mouse.down()
        page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")
        bare = canvas_pixels(page, "#result-canvas")
        page.mouse.up()
        page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")
        assert (bare != canvas_pixels(page, "#result-canvas")).any()

        # A kiosk offers nothing to download and selects no text.
        assert page.evaluate("() => document.querySelectorAll('a[download], a[href]').length") == 0
        assert page.evaluate("() => getComputedStyle(document.body).userSelect") == "none"
        assert storage_state(page) == EMPTY_STORAGE
        assert_clean(page, log)


def test_idle_timeout_wipes_everything_without_reloading(server, browser):
    with browser_context(browser, viewport=DESKTOP) as ctx:
        page, log = open_page(ctx, server.url + "/kiosk")
        page.evaluate("() => { window.sameDocument = true; }")
        take_photo(page)
        assert leftovers(page)["canvases"] != [0, 0]

        # Untouched, the kiosk first warns, then goes back to the welcome screen.
        wait_until(page, "() => !document.querySelector('#idle-warning').hidden", IDLE_SECONDS + 2)
        assert "Touch the screen to stay" in page.text_content("#idle-warning")
        wait_screen(page, "welcome", IDLE_SECONDS + 3)
        left = leftovers(page)
        assert left["canvases"] == [0, 0], "no pixels left in any canvas"
        assert left["images"] == 0 and left["blobRefs"] == []
        assert left["videoSource"] is False and left["liveTracks"] == 0
        assert left["unrevoked"] == []
        assert page.eval_on_selector_all("#legend li", "(items) => items.length") == 0
        assert page.text_content("#result-title") == ""
        assert page.is_hidden("#idle-warning")
        assert page.evaluate("() => window.sameDocument") is True, "the page was not reloaded"
        assert storage_state(page) == EMPTY_STORAGE
        shoot(page, "kiosk-desktop-after-idle")
        assert_clean(page, log)


def test_touching_keeps_the_session_and_idle_stops_the_camera(server, browser):
    with browser_context(browser, viewport=DESKTOP) as ctx:
        page, log = open_page(ctx, server.url + "/kiosk")
        page.click("#start")
        wait_until(page, "() => document.querySelector('#video').videoWidth > 0")
        # Touches reset the idle countdown: after more than the idle time in total, still here.
        for _ in range(3):
            page.wait_for_timeout(IDLE_SECONDS * 1000 // 2)
            page.mouse.click(10, 300)
        assert screen(page) == "camera" and camera_live(page)
        wait_screen(page, "welcome", IDLE_SECONDS + 3)
        left = leftovers(page)
        assert left["liveTracks"] == 0 and left["videoSource"] is False
        assert_clean(page, log)


def test_start_again_and_fullscreen_survive_the_reset(server, browser):
    with browser_context(browser, viewport=DESKTOP) as ctx:
        page, log = open_page(ctx, server.url + "/kiosk")
        assert page.is_visible("#fullscreen")
        page.click("#fullscreen")
        wait_until(page, "() => document.fullscreenElement !== null")
        take_photo(page)
        page.click("#again")
        wait_screen(page, "camera")
        assert leftovers(page)["canvases"] == [0, 0]
        wait_until(page, "() => document.querySelector('#video').videoWidth > 0")
        wait_screen(page, "welcome", IDLE_SECONDS + 3)
        assert page.evaluate("() => document.fullscreenElement !== null"), "still full screen"
        assert_clean(page, log)


def test_without_a_camera_it_offers_no_file_dialog_by_default(server, playwright):
    # On a public kiosk the OS file dialog lets a stranger browse the machine: off by default.
    chromium = launch(playwright, camera=False)  # headless, no fake device: no camera at all
    try:
        ctx = chromium.new_context(viewport=DESKTOP)
        page, log = open_page(ctx, server.url + "/kiosk")
        choosers = FileChoosers(page)
        page.click("#start")
        wait_until(page, "() => !document.querySelector('#no-camera').hidden")
        assert page.is_hidden("#shutter")
        assert page.locator("input[type=file], #pick").count() == 0
        assert "ask a member of staff" in page.text_content("#no-camera-detail")
        shoot(page, "kiosk-desktop-no-camera-no-fallback")
        page.click("#no-camera-home")
        wait_screen(page, "welcome")
        assert choosers.seen == []
        assert_clean(page, log)
    finally:
        chromium.close()


def test_without_a_camera_the_operator_can_offer_a_file_pick(tiny_model_dir, playwright):
    app = make_app(tiny_model_dir, kiosk_file_fallback=True)
    chromium = launch(playwright, camera=False)
    try:
        with serve(app) as live:
            ctx = chromium.new_context(viewport=DESKTOP)
            page, log = open_page(ctx, live.url + "/kiosk")
            choosers = FileChoosers(page)
            page.click("#start")
            wait_until(page, "() => !document.querySelector('#no-camera').hidden")
            assert page.is_hidden("#shutter")
            assert "Choose a photo" in page.text_content("#no-camera")
            shoot(page, "kiosk-desktop-no-camera")
            page.click("#pick")
            chooser = choosers.next()
            with page.expect_response(lambda r: "/api/v1/parse" in r.url) as response:
                chooser.set_files(
                    files=[{"name": "p.jpg", "mimeType": "image/jpeg", "buffer": photo(fmt="JPEG")}]
                )
            assert response.value.status == 200
            wait_screen(page, "result")
            assert page.is_visible("#again")
            assert_clean(page, log)
    finally:
        chromium.close()
