"""The drag-and-drop page (`/`) as people use it: a failed upload keeps the result on
screen, words that agree with the overlay, a phone (notice, touch words, tap to single out),
zoom and pan, the sample photo and the colour-blind-safe palette. Real headless Chromium against
the real app and a tiny model; screenshots in artifacts/screenshots/ named after the state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m2fp.labels import PALETTES_HEX
from tests.support.axe import assert_accessible
from tests.support.images import photo
from tests.support.pages import (
    DESKTOP,
    PHONE,
    assert_clean,
    browser_context,
    canvas_pixels,
    decode_label_map,
    is_parse,
    legend_ids,
    open_page,
    parse_by_picking,
    pick,
    settle,
    shoot,
    wait_until,
)

pytestmark = pytest.mark.browser

TOUCH_PHONE = {"viewport": PHONE, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
FRAME = "() => new Promise((r) => requestAnimationFrame(() => r()))"


def test_a_failed_upload_keeps_the_previous_result(server, browser):
    with browser_context(browser, viewport=DESKTOP) as ctx:
        page, log = open_page(ctx, server.url + "/")
        parse_by_picking(page)
        before = canvas_pixels(page, "#canvas")
        legend = legend_ids(page)

        # The next upload is refused by the server for real (its bytes stop being an image).
        def corrupt(route):
            body = route.request.post_data_buffer
            start = body.index(b"\x89PNG")
            route.continue_(post_data=body[:start] + b"GIF89a not an image" + body[start + 40 :])

        page.route("**/api/v1/parse*", corrupt)
        with page.expect_response(is_parse) as response:
            pick(page, photo(200, 160), "second.png")
        assert response.value.status == 415
        settle(page)
        wait_until(page, "() => !document.querySelector('#error').hidden")
        assert page.text_content("#error-title") == "This file isn't a JPEG, PNG or WebP image."
        assert page.is_visible("#error-kept")
        assert page.is_visible("#workspace") and page.is_hidden("#busy")
        assert np.array_equal(canvas_pixels(page, "#canvas"), before)
        assert legend_ids(page) == legend
        assert page.is_enabled("#download-overlay")
        shoot(page, "index-desktop-error-beside-kept-result")
        assert_accessible(page, "/ error beside a kept result")
        assert_clean(page, log, allow=("status of 415",))


def test_parts_without_a_confident_person_are_named_as_such(server, browser):
    with browser_context(browser, viewport=DESKTOP) as ctx:
        page, log = open_page(ctx, server.url + "/")

        # The server's real answer, with its persons taken out: parts painted, nobody outlined.
        def without_persons(route):
            answer = route.fetch()
            body = answer.json()
            body["persons"] = []
            route.fulfill(response=answer, body=json.dumps(body))

        page.route("**/api/v1/parse*", without_persons)
        parse_by_picking(page)
        assert page.eval_on_selector_all("#legend li", "(items) => items.length") > 0
        empty = page.text_content("#persons-empty")
        assert page.is_visible("#persons-empty")
        assert "Nobody" not in empty
        assert empty.startswith("No person was found with confidence")
        label = page.get_attribute("#canvas", "aria-label")
        assert "but no person the model is sure of" in label
        shoot(page, "index-desktop-parts-without-person")
        assert_clean(page, log)


def test_phone_touch_words_notice_and_tap_to_single_out(server, browser):
    with browser_context(browser, **TOUCH_PHONE) as ctx:
        page, log = open_page(ctx, server.url + "/")
        assert page.evaluate("() => matchMedia('(hover: none)').matches")
        # Touch words: tap, no Ctrl V, no pointing.
        assert page.is_visible("#dropzone .if-touch")
        assert page.is_hidden("#dropzone kbd >> nth=0")
        assert "Tap to choose a photo" in page.inner_text("#dropzone")
        shoot(page, "index-phone-touch-empty")
        answer = parse_by_picking(page, photo(480, 640))
        hint = page.inner_text(".panel-hint >> nth=0")
        assert "Tap its name" in hint and "Point" not in hint

        # Every Save button, scrolled up from below until it just shows (as a thumb scrolls),
        # is above the pinned notice, not behind it.
        for button in (
            "#download-overlay",
            "#copy-overlay",
            "#download-cutout",
            "#download-labels",
            "#download-json",
        ):
            covered = page.evaluate(
                """(selector) => {
                  const button = document.querySelector(selector);
                  button.scrollIntoView({ block: "end" });
                  const b = button.getBoundingClientRect();
                  const hit = document.elementFromPoint(b.x + b.width / 2, b.y + b.height - 2);
                  return !hit || !hit.closest(selector);
                }""",
                button,
            )
            assert not covered, f"{button} is under the privacy notice"
        assert page.locator(".privacy").bounding_box()["y"] + page.locator(
            ".privacy"
        ).bounding_box()["height"] == pytest.approx(PHONE["height"], abs=1)
        shoot(page, "index-phone-save-above-notice")

        # Tap a legend name: that part is singled out (the rest dimmed); tap again: let go.
        page.locator("#legend .legend-pick >> nth=0").scroll_into_view_if_needed()
        before = canvas_pixels(page, "#canvas")
        page.tap("#legend .legend-pick >> nth=0")
        assert page.get_attribute("#legend .legend-pick >> nth=0", "aria-pressed") == "true"
        page.evaluate(FRAME)
        assert not np.array_equal(canvas_pixels(page, "#canvas"), before)
        page.tap("#legend .legend-pick >> nth=0")
        assert page.get_attribute("#legend .legend-pick >> nth=0", "aria-pressed") == "false"

        # Tap the picture: the part under the finger is singled out and named.
        labels = decode_label_map(answer)
        ys, xs = np.nonzero(labels)
        y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
        page.locator("#canvas").scroll_into_view_if_needed()
        box = page.locator("#canvas").bounding_box()
        scale = box["width"] / labels.shape[1]
        page.tap("#canvas", position={"x": (x + 0.5) * scale, "y": (y + 0.5) * scale})
        pressed = page.eval_on_selector_all(
            "#legend .legend-pick[aria-pressed=true]", "(bs) => bs.map((b) => b.dataset.id)"
        )
        assert pressed == [str(labels[y, x])]
        assert page.is_visible("#tooltip")
        shoot(page, "index-phone-tapped-part")
        assert_clean(page, log)


def test_zoom_and_pan_by_keys_wheel_and_pinch(server, browser):
    with browser_context(browser, viewport=DESKTOP) as ctx:
        page, log = open_page(ctx, server.url + "/")
        parse_by_picking(page, photo(640, 480))
        # Focus moves to the result when it arrives.
        assert page.evaluate("() => document.activeElement.id") == "stage"
        transform = "() => getComputedStyle(document.querySelector('#canvas')).transform"
        assert page.evaluate(transform) == "none"
        page.keyboard.press("+")
        assert page.text_content("#zoom-value") == "150%"
        zoomed = page.evaluate(transform)
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowDown")
        assert page.evaluate(transform) != zoomed, "arrows pan"
        shoot(page, "index-desktop-zoomed")
        page.keyboard.press("0")
        assert page.evaluate(transform) == "none" and page.text_content("#zoom-value") == "100%"

        box = page.locator("#canvas").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -300)
        wait_until(page, "() => document.querySelector('#zoom-value').textContent !== '100%'")
        page.click("#zoom-reset")
        assert page.text_content("#zoom-value") == "100%"
        assert_clean(page, log)


def test_pinch_zooms_on_a_touch_screen(server, browser):
    with browser_context(browser, **TOUCH_PHONE) as ctx:
        page, log = open_page(ctx, server.url + "/")
        parse_by_picking(page, photo(480, 640))
        page.locator("#canvas").scroll_into_view_if_needed()
        box = page.locator("#canvas").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        cdp = ctx.new_cdp_session(page)

        def touch(kind: str, spread: float) -> None:
            points = [{"x": cx - spread, "y": cy, "id": 1}, {"x": cx + spread, "y": cy, "id": 2}]
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

        touch("touchStart", 20)
        for spread in range(25, 90, 5):
            touch("touchMove", spread)
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        value = int(page.text_content("#zoom-value").rstrip("%"))
        assert value > 200, f"a pinch from 40 to 170 px zooms in, got {value}%"
        shoot(page, "index-phone-pinched")
        assert_clean(page, log)


def test_sample_photo_and_colour_blind_palette(server, browser):
    with browser_context(browser, viewport=DESKTOP) as ctx:
        page, log = open_page(ctx, server.url + "/")
        with page.expect_response(is_parse) as response:
            page.click("#sample")
        assert response.value.status == 200
        answer = response.value.json()
        settle(page)
        assert page.is_visible("#workspace")
        assert (answer["image"]["width"], answer["image"]["height"]) == (1200, 900)
        shoot(page, "index-desktop-sample-result")
        before = canvas_pixels(page, "#canvas")

        sent = []
        page.on("request", lambda r: sent.append(r.url) if "/api/" in r.url else None)
        page.select_option("#palette", "cvd")
        page.evaluate(FRAME)
        colours = page.eval_on_selector_all(
            "#legend li",
            """(items) => items.map((li) => [Number(li.dataset.id),
                 getComputedStyle(li.querySelector(".swatch")).backgroundColor])""",
        )
        for class_id, colour in colours:
            r, g, b = bytes.fromhex(PALETTES_HEX["cvd"][class_id][1:])
            assert colour == f"rgb({r}, {g}, {b})"
        assert not np.array_equal(canvas_pixels(page, "#canvas"), before)
        assert sent == [], "repainting asks the server nothing"
        shoot(page, "index-desktop-sample-cvd-palette")
        assert_accessible(page, "/ sample with the colour-blind-safe palette")
        assert_clean(page, log)
