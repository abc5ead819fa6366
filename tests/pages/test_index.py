"""The drag-and-drop page (`/`) in real headless Chromium against the real app and a tiny model."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.images import decode_array, gif, photo
from tests.support.pages import (
    DESKTOP,
    EMPTY_STORAGE,
    PHONE,
    FileChoosers,
    assert_clean,
    browser_context,
    canvas_pixels,
    decode_label_map,
    drop_file,
    is_parse,
    leftovers,
    make_app,
    open_page,
    parse_by_picking,
    pick,
    rle_mask,
    serve,
    settle,
    shoot,
    storage_state,
    wait_until,
)

pytestmark = pytest.mark.browser

DIM = 0.28  # static/js/compositor.js: brightness kept outside a highlighted person


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    yield ctx
    ctx.close()


def photo_pixels(data: bytes) -> np.ndarray:
    return decode_array(data)[..., :3].astype(np.float64)


def palette_of(answer: dict) -> dict[int, np.ndarray]:
    return {
        c["id"]: np.array(list(bytes.fromhex(c["color"][1:])), dtype=np.float64)
        for c in answer["classes"]
    }


def expected_overlay(image: np.ndarray, labels: np.ndarray, answer: dict, alpha: float, hidden=()):
    out = image.copy()
    for cid, colour in palette_of(answer).items():
        if cid == 0 or cid in hidden:
            continue
        sel = labels == cid
        out[sel] = image[sel] + (colour - image[sel]) * alpha
    return out


def assert_close(actual: np.ndarray, expected: np.ndarray, tol: float = 1.0) -> None:
    diff = np.abs(actual[..., :3].astype(np.float64) - expected)
    assert diff.max() <= tol, (
        f"max difference {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"
    )


def test_dropped_photo_shows_overlay_legend_and_people(server, context):
    page, log = open_page(context, server.url + "/")
    shoot(page, "index-desktop-empty")
    data = photo()
    page.evaluate(
        """() => document.querySelector("main").dispatchEvent(new DragEvent("dragenter",
             { dataTransfer: (() => { const t = new DataTransfer();
               t.items.add(new File(["x"], "x.png", { type: "image/png" })); return t; })(),
               bubbles: true }))"""
    )
    assert page.is_visible("#drop-overlay")
    with page.expect_response(is_parse) as response:
        drop_file(page, data, "photo.png", "image/png")
    answer = response.value.json()
    settle(page)
    assert page.is_hidden("#drop-overlay")
    labels = decode_label_map(answer)
    assert labels.shape == (answer["image"]["height"], answer["image"]["width"])

    # The overlay: the photo tinted with each class' colour at the default opacity (60 %).
    pixels = canvas_pixels(page, "#canvas")
    assert pixels.shape[:2] == labels.shape
    assert_close(pixels, expected_overlay(photo_pixels(data), labels, answer, 0.6))

    # The legend lists exactly the part classes present, in their colours.
    parts = [c for c in answer["classes"] if c["id"] != 0]
    assert parts, "the tiny model should find some parts"
    rows = page.eval_on_selector_all(
        "#legend li",
        """(items) => items.map((li) => ({ id: Number(li.dataset.id),
             colour: getComputedStyle(li.querySelector(".swatch")).backgroundColor,
             name: li.querySelector(".legend-name").textContent }))""",
    )
    assert [r["id"] for r in rows] == [c["id"] for c in parts]
    for row, c in zip(rows, parts, strict=True):
        r, g, b = bytes.fromhex(c["color"][1:])
        assert row["colour"] == f"rgb({r}, {g}, {b})"
        assert row["name"].replace(" ", "").lower() == c["name"].replace("-", "").lower()
    people = page.eval_on_selector_all("#persons button", "(bs) => bs.length")
    assert people == len(answer["persons"])
    assert page.get_attribute("#canvas", "aria-label").startswith("Photo with coloured parts")
    shoot(page, "index-desktop-result")
    assert_clean(page, log)


def test_toggles_opacity_compare_and_highlight_redraw_in_the_browser(server, context):
    page, log = open_page(context, server.url + "/")
    data = photo()
    answer = parse_by_picking(page, data)
    image = photo_pixels(data)
    labels = decode_label_map(answer)
    parse_requests = []
    page.on("request", lambda r: parse_requests.append(r.url) if "/api/" in r.url else None)

    # Untick the biggest part: its pixels go back to the photo, the rest stays tinted.
    biggest = max((c for c in answer["classes"] if c["id"] != 0), key=lambda c: c["pixels"])
    page.uncheck(f"#legend li[data-id='{biggest['id']}'] input")
    page.mouse.move(0, 0)  # leave the legend row: no class highlight
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")
    pixels = canvas_pixels(page, "#canvas")
    assert_close(pixels, expected_overlay(image, labels, answer, 0.6, hidden={biggest["id"]}))
    page.check(f"#legend li[data-id='{biggest['id']}'] input")
    page.mouse.move(0, 0)

    # The opacity slider, by keyboard: End = 100 % (pure class colours), Home = 0 % (the photo).
    page.focus("#opacity")
    page.keyboard.press("End")
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")
    assert page.text_content("#opacity-value") == "100%"
    assert_close(canvas_pixels(page, "#canvas"), expected_overlay(image, labels, answer, 1.0), 0)
    page.keyboard.press("Home")
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")
    assert_close(canvas_pixels(page, "#canvas"), image, 0)
    page.keyboard.press("End")

    # Before/after: the left half shows the photo, the right half the overlay.
    page.click("#compare")
    assert page.get_attribute("#compare", "aria-pressed") == "true"
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")
    pixels = canvas_pixels(page, "#canvas")
    width = labels.shape[1]
    left, right = slice(0, width // 2 - 20), slice(width // 2 + 20, width)
    tinted = expected_overlay(image, labels, answer, 1.0)
    assert_close(pixels[:, left], image[:, left], 0)
    assert_close(pixels[:, right], tinted[:, right], 0)
    shoot(page, "index-desktop-compare")
    page.click("#compare")

    # Pointing at a person dims everything outside that person's mask.
    if answer["persons"]:
        person = answer["persons"][0]
        mask = rle_mask(person["mask"])
        page.hover(f"#persons button[data-id='{person['id']}']")
        page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")
        pixels = canvas_pixels(page, "#canvas")[..., :3].astype(np.float64)
        assert_close(pixels[mask], tinted[mask], 0)
        assert_close(pixels[~mask], np.floor(tinted[~mask] * DIM), 1)
        shoot(page, "index-desktop-person")
    assert parse_requests == [], "recolouring must not ask the server again"
    assert_clean(page, log)


def test_downloads_are_valid_png_and_json(server, context):
    page, log = open_page(context, server.url + "/")
    answer = parse_by_picking(page)
    page.mouse.move(0, 0)

    with page.expect_download() as download:
        page.click("#download-overlay")
    assert download.value.suggested_filename == "photo-overlay.png"  # picked as photo.png
    overlay = decode_array(Path(download.value.path()).read_bytes())
    assert overlay.shape[:2] == (answer["image"]["height"], answer["image"]["width"])
    assert np.array_equal(overlay[..., :3], canvas_pixels(page, "#canvas")[..., :3])

    with page.expect_download() as download:
        page.click("#download-labels")
    raw = Path(download.value.path()).read_bytes()
    assert raw == base64.b64decode(answer["label_map"]["data"])
    with Image.open(io.BytesIO(raw)) as labels:
        assert labels.format == "PNG"
        assert labels.mode in ("L", "P")
        assert int(np.asarray(labels).max()) <= 19

    with page.expect_download() as download:
        page.click("#download-json")
    saved = json.loads(Path(download.value.path()).read_text())
    assert saved == answer
    assert {"image", "classes", "persons", "label_map"} <= saved.keys()
    assert storage_state(page) == EMPTY_STORAGE
    assert_clean(page, log)


def test_copy_overlay_puts_a_png_on_the_clipboard(server, browser):
    with browser_context(
        browser, viewport=DESKTOP, permissions=["clipboard-read", "clipboard-write"]
    ) as ctx:
        page, log = open_page(ctx, server.url + "/")
        answer = parse_by_picking(page)
        page.click("#copy-overlay")
        wait_until(page, "() => document.querySelector('#toast').textContent.includes('copied')")
        size = page.evaluate(
            """async () => {
              const [item] = await navigator.clipboard.read();
              const bitmap = await createImageBitmap(await item.getType("image/png"));
              return [bitmap.width, bitmap.height];
            }"""
        )
        assert size == [answer["image"]["width"], answer["image"]["height"]]
        assert_clean(page, log)


def test_paste_parses_the_clipboard_image(server, context):
    page, log = open_page(context, server.url + "/")
    with page.expect_response(is_parse) as response:
        drop_file(page, photo(), "pasted.png", "image/png", event="paste")
    assert response.value.status == 200
    settle(page)
    assert page.is_visible("#workspace")
    assert_clean(page, log)


def test_client_refuses_wrong_type_and_oversize_without_uploading(server, context):
    page, log = open_page(context, server.url + "/")
    sent = []
    page.on("request", lambda r: sent.append(r.url) if "/api/v1/parse" in r.url else None)

    animation = gif(8, 8)
    pick(page, animation, "anim.gif", "image/gif")
    wait_until(page, "() => !document.querySelector('#error').hidden")
    assert page.text_content("#error-title") == "GIF images can't be parsed."
    assert "JPEG, PNG or WebP" in page.text_content("#error-detail")

    # A PNG that lies about itself: the bytes say GIF.
    pick(page, animation, "liar.png", "image/png")
    wait_until(
        page, "() => document.querySelector('#error-title').textContent.includes('contains')"
    )
    assert page.text_content("#error-title") == "This file says it is PNG but contains GIF."

    big = photo()[:16] + bytes(10 * 1024 * 1024 + 1)
    pick(page, big, "huge.png", "image/png")
    wait_until(page, "() => document.querySelector('#error-title').textContent.includes('large')")
    assert page.text_content("#error-title") == "This photo is too large (10 MB)."
    assert page.text_content("#error-detail").startswith("The limit is 10 MB.")
    assert page.is_visible("#dropzone")
    shoot(page, "index-desktop-error")
    assert sent == []
    assert_clean(page, log)


def test_server_415_reads_in_plain_words(server, context):
    page, log = open_page(context, server.url + "/")
    data = photo()

    # The page's own checks pass; on the way, the body's image bytes become text, so the
    # server's sniffing refuses them for real.
    def corrupt(route):
        body = route.request.post_data_buffer.replace(data, b"GIF89a this is not an image at all")
        route.continue_(post_data=body)

    page.route("**/api/v1/parse*", corrupt)
    with page.expect_response(is_parse) as response:
        pick(page, data)
    assert response.value.status == 415
    settle(page)
    assert page.text_content("#error-title") == "This file isn't a JPEG, PNG or WebP image."
    assert page.is_hidden("#workspace")
    assert_clean(page, log, allow=("status of 415",))


def test_server_429_says_how_long_to_wait(tiny_model_dir, browser):
    limited_app = make_app(tiny_model_dir, rate_limit="1 per minute")
    with serve(limited_app) as limited, browser_context(browser, viewport=DESKTOP) as ctx:
        page, log = open_page(ctx, limited.url + "/")
        parse_by_picking(page)
        with page.expect_response(is_parse) as response:
            pick(page, photo(200, 150))
        assert response.value.status == 429
        wait = int(response.value.headers["retry-after"])
        settle(page)
        assert page.text_content("#error-title") == "Too many photos in a short time."
        detail = page.text_content("#error-detail")
        assert detail.startswith("Please wait ") and detail.endswith(", then try again.")
        shown = int(detail.split()[2])
        assert 0 < shown <= wait
        assert page.is_disabled("#error-retry")
        shoot(page, "index-desktop-429")
        assert_clean(page, log, allow=("status of 429",))


def test_clear_forgets_pixels_and_object_urls(server, context):
    page, log = open_page(context, server.url + "/")
    parse_by_picking(page)
    with page.expect_download():
        page.click("#download-overlay")
    with page.expect_download():
        page.click("#download-json")
    assert len(page.evaluate("() => window.__probe.created")) == 2
    page.click("#clear")
    left = leftovers(page)
    assert left["canvases"] == [0]
    assert left["blobRefs"] == [] and left["images"] == 0
    assert left["unrevoked"] == []
    assert page.eval_on_selector_all("#legend li, #persons li", "(items) => items.length") == 0
    assert page.is_visible("#dropzone") and page.is_hidden("#workspace")
    assert page.evaluate("() => document.activeElement.id") == "dropzone"
    assert storage_state(page) == EMPTY_STORAGE
    assert_clean(page, log)


def test_keyboard_only_use(server, context):
    page, log = open_page(context, server.url + "/")
    choosers = FileChoosers(page)
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "dropzone":
            break
    assert page.evaluate("() => document.activeElement.id") == "dropzone"
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused drop zone must show a focus ring"
    page.keyboard.press("Enter")
    chooser = choosers.next()  # Enter on the drop zone opens the file picker
    with page.expect_response(is_parse):
        chooser.set_files(files=[{"name": "p.png", "mimeType": "image/png", "buffer": photo()}])
    settle(page)
    before = canvas_pixels(page, "#canvas")
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.matches('#legend input')"):
            break
    assert page.evaluate("() => document.activeElement.matches('#legend input')")
    page.keyboard.press("Space")
    assert not page.evaluate("() => document.activeElement.checked")
    page.keyboard.press("Tab")  # move on, so the class highlight of the focused row ends
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")
    assert not np.array_equal(before, canvas_pixels(page, "#canvas"))
    assert_clean(page, log)


@pytest.mark.parametrize(
    ("name", "viewport", "scale"),
    [("phone", PHONE, 2), ("large", {"width": 2560, "height": 1440}, 1)],
)
def test_readable_on_a_phone_and_a_large_screen(server, browser, name, viewport, scale):
    with browser_context(browser, viewport=viewport, device_scale_factor=scale) as ctx:
        page, log = open_page(ctx, server.url + "/")
        shoot(page, f"index-{name}-empty")
        width = viewport["width"]
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width
        parse_by_picking(page, photo(480, 640))
        shoot(page, f"index-{name}-result")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width
        box = page.locator(".privacy").bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"] + 0.5
        canvas = page.locator("#canvas").bounding_box()
        assert canvas["width"] <= width and canvas["width"] >= min(width - 40, 300)
        for selector in (
            "#opacity",
            "#compare",
            "#legend input >> nth=0",
            "#persons button >> nth=0",
        ):
            if page.locator(selector).count():
                assert page.locator(selector).is_visible()
        if name == "phone":
            # Scrolled down to the lists, the notice is still pinned to the bottom edge.
            page.locator("#persons").scroll_into_view_if_needed()
            box = page.locator(".privacy").bounding_box()
            assert abs(box["y"] + box["height"] - viewport["height"]) <= 1
            shoot(page, "index-phone-panel")
        assert_clean(page, log)
