"""Exports from the drag-and-drop page in real headless Chromium against the
real app: the transparent cutout of the ticked parts, each person's mask and cutout, the
photo's own size, and download names taken from the photo's name (`beach.jpg` →
`beach-overlay.png`; a pasted image → `photo-…`). axe on the open exports menu; screenshots
in artifacts/screenshots/ named after the state."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.axe import assert_accessible
from tests.support.images import decode_array, photo
from tests.support.pages import (
    DESKTOP,
    PHONE,
    assert_clean,
    browser_context,
    drop_file,
    is_parse,
    make_app,
    open_page,
    pick,
    rle_mask,
    serve,
    settle,
    shoot,
    wait_until,
)
from web.options import PARAMETERS

pytestmark = pytest.mark.browser

# The working copy is at most this long: a 400 × 300 photo is parsed at 200 × 150.
MAX_SIDE = 200
OWN = (300, 400)  # the photo's own (height, width)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with serve(make_app(tiny_model_dir, max_side=MAX_SIDE)) as live:
        yield live


def parse_beach(page) -> dict:
    with page.expect_response(is_parse) as answer:
        pick(page, photo(OWN[1], OWN[0], fmt="JPEG"), "beach.jpg", "image/jpeg")
    assert answer.value.status == 200
    settle(page)
    return answer.value.json()


def save(page, selector: str) -> tuple[str, bytes]:
    with page.expect_download() as download:
        page.click(selector)
    return download.value.suggested_filename, Path(download.value.path()).read_bytes()


def labels_of(answer: dict) -> np.ndarray:
    return decode_array(base64.b64decode(answer["label_map"]["data"]))


def test_downloads_are_named_after_the_photo_and_hold_what_they_say(server, browser):
    with browser_context(browser, viewport=DESKTOP, accept_downloads=True) as ctx:
        page, log = open_page(ctx, server.url + "/")
        answer = parse_beach(page)
        size = (answer["image"]["height"], answer["image"]["width"])
        assert size == (150, 200)
        labels = labels_of(answer)

        name, data = save(page, "#download-overlay")
        assert name == "beach-overlay.png"
        assert decode_array(data).shape[:2] == size
        assert save(page, "#download-labels") == (
            "beach-labels.png",
            base64.b64decode(answer["label_map"]["data"]),
        )
        name, data = save(page, "#download-json")
        assert name == "beach-parsing.json" and json.loads(data) == answer

        # The cutout keeps the ticked parts only. None ticked: nothing to cut out, it says so.
        parts = [c["id"] for c in answer["classes"] if c["id"] != 0]
        assert parts, "the tiny model paints some parts"
        page.click("#show-none")
        page.click("#download-cutout")
        wait_until(page, "() => !document.querySelector('#toast').hidden")
        assert page.text_content("#toast") == "Tick at least one part for the cutout."
        page.click("#show-all")
        ticked = parts
        if len(parts) > 1:  # leave the first part out
            page.click(f"#legend li[data-id='{parts[0]}'] input[type=checkbox]")
            ticked = parts[1:]
        name, data = save(page, "#download-cutout")
        assert name == "beach-cutout.png"
        cutout = decode_array(data)
        assert cutout.shape == (*size, 4)
        kept = np.isin(labels, ticked)
        assert kept.any()
        assert np.array_equal(cutout[..., 3] == 255, kept)
        assert (cutout[..., 3][~kept] == 0).all()

        # Each person: the mask (white inside) and the cutout (the person, transparent around).
        persons = answer["persons"]
        assert persons, "the tiny model finds people"
        page.click("#exports summary")
        assert page.is_visible("#export-list")
        shoot(page, "index-exports-menu")
        assert_accessible(page, "exports menu open")
        for person in persons[:2]:
            mask = rle_mask(person["mask"])
            name, data = save(
                page, f"#export-list button[data-person='{person['id']}'][data-kind='mask']"
            )
            assert name == f"beach-person-{person['id']}-mask.png"
            matte = decode_array(data)
            assert np.array_equal(matte[..., 0] == 255, mask)
            assert (matte[..., 0][~mask] == 0).all()
            name, data = save(
                page, f"#export-list button[data-person='{person['id']}'][data-kind='cutout']"
            )
            assert name == f"beach-person-{person['id']}-cutout.png"
            assert np.array_equal(decode_array(data)[..., 3] == 255, mask)
        assert_clean(page, log)


def test_exports_menu_on_a_phone_in_the_dark(server, browser):
    with browser_context(browser, viewport=PHONE, color_scheme="dark", has_touch=True) as ctx:
        page, log = open_page(ctx, server.url + "/")
        answer = parse_beach(page)
        page.click("#exports summary")
        rows = page.eval_on_selector_all("#export-list li", "(items) => items.length")
        assert rows == len(answer["persons"])
        page.check("#full-size")
        page.eval_on_selector("#exports", "(menu) => menu.scrollIntoView({ block: 'end' })")
        assert_accessible(page, "exports menu, phone, dark")
        shoot(page, "index-exports-menu-phone-dark")
        assert_clean(page, log)


def test_a_pasted_image_is_called_photo(server, browser):
    with browser_context(browser, viewport=DESKTOP, accept_downloads=True) as ctx:
        page, log = open_page(ctx, server.url + "/")
        with page.expect_response(is_parse):
            # browsers name a pasted image "image.png"; that is no name of the user's
            drop_file(page, photo(240, 180), "image.png", "image/png", event="paste")
        settle(page)
        assert save(page, "#download-overlay")[0] == "photo-overlay.png"
        page.click("#exports summary")
        assert save(page, "#export-list button[data-kind='mask']")[0] == "photo-person-1-mask.png"
        assert_clean(page, log)


def test_the_photos_own_size(server, browser):
    with browser_context(browser, viewport=DESKTOP, accept_downloads=True) as ctx:
        page, log = open_page(ctx, server.url + "/")
        parse_beach(page)
        assert page.is_visible("#full-size-row")
        assert page.text_content("#full-size-label") == "400 × 300 px"
        assert page.text_content("#work-size-label") == "200 × 150 px"
        page.check("#full-size")
        shoot(page, "index-exports-own-size")
        assert_accessible(page, "own size ticked")
        sent: list[str] = []
        page.on("request", lambda r: sent.append(r.url) if is_parse(r) else None)
        if "size" in PARAMETERS:
            # The API's original-size option: a second parse at the photo's size.
            name, data = save(page, "#download-overlay")
            assert name == "beach-overlay.png"
            assert decode_array(data).shape[:2] == OWN
            name, data = save(page, "#download-cutout")
            assert name == "beach-cutout.png" and decode_array(data).shape[:2] == OWN
            assert len(sent) == 1, "the full-size result is made once"
        else:
            # A service without that option refuses it; the page says so and saves nothing.
            page.click("#download-overlay")
            wait_until(page, "() => !document.querySelector('#toast').hidden")
            assert page.text_content("#toast").startswith("The full-size file couldn't be made.")
            assert len(sent) == 1
        assert "size=original" in sent[0]
        # the picture on screen is still the working-size result
        assert page.evaluate("() => document.querySelector('#canvas').width") == 200
        assert_clean(page, log, allow=("400 (BAD REQUEST)", "status of 400"))
