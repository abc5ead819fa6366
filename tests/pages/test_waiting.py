"""Honest waiting in real headless Chromium against the real app: the progress
card's place in the queue, time left and elapsed time from `GET /api/v1/queue`; Cancel, which
aborts the request, says so and keeps the previous result; the kiosk's working screen in big
type; the page's deadline never shorter than the server's. axe on each new state; screenshots
in artifacts/screenshots/ named after the state.

The parses are slow for real: the model's forward waits at a gate the test holds (a hook on the
real tiny model, in the test, not the app), while other parses sent over HTTP queue behind it.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import urllib.request

import numpy as np
import pytest

from app import create_app
from m2fp.engine import InferenceEngine
from tests.support.axe import assert_accessible
from tests.support.images import photo
from tests.support.pages import (
    BASE_SETTINGS,
    DESKTOP,
    PHONE,
    assert_clean,
    browser_context,
    canvas_pixels,
    launch,
    legend_ids,
    open_page,
    pick,
    serve,
    settle,
    shoot,
    wait_screen,
    wait_until,
)
from web.pages import PARSE_TIMEOUT_SECONDS
from web.service import ENGINE_TIMEOUT_S

pytestmark = pytest.mark.browser

PORTRAIT = {"width": 1080, "height": 1920}


class Gated:
    """The served app around an engine whose model waits at `gate` before each forward."""

    def __init__(self, tiny_model) -> None:
        model = copy.deepcopy(tiny_model)
        self.gate = threading.Event()
        self.gate.set()
        model.register_forward_pre_hook(lambda module, args: self.gate.wait(60) and None)
        # optimize=False: the hook stays on the model the engine runs
        self.engine = InferenceEngine(model=model, device="cpu", warmup=False, optimize=False)
        self.app = create_app({**BASE_SETTINGS, "engine": self.engine, "kiosk_idle_seconds": 300})
        self.senders: list[threading.Thread] = []
        self.url = ""

    def send(self) -> None:
        """A parse from someone else, over HTTP, in the background."""

        def post() -> None:
            request = urllib.request.Request(
                self.url + "/api/v1/parse?output=json",
                data=photo(64, 48),
                headers={"Content-Type": "image/png"},
            )
            with urllib.request.urlopen(request, timeout=120) as answer:
                answer.read()

        sender = threading.Thread(target=post, daemon=True)
        sender.start()
        self.senders.append(sender)

    def hold(self, *, running: int, queued: int) -> None:
        """Close the gate and wait until the engine holds exactly this work."""
        self.gate.clear()
        for _ in range(running + queued):
            self.send()
        self.wait_for(running=running, queued=queued)

    def wait_for(self, *, running: int, queued: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while (s := self.engine.stats()).running != running or s.queued != queued:
            assert time.monotonic() < deadline, f"engine holds {s}"
            time.sleep(0.02)

    def release(self) -> None:
        self.gate.set()
        for sender in self.senders:
            sender.join(60)
        self.senders.clear()

    def queue(self) -> dict:
        with urllib.request.urlopen(self.url + "/api/v1/queue", timeout=10) as answer:
            return json.load(answer)


@pytest.fixture(scope="module")
def gated(tiny_model):
    served = Gated(tiny_model)
    with serve(served.app) as live:
        served.url = live.url
        served.send()  # one parse through, so the service time is measured
        served.release()
        assert served.queue()["service_seconds"] > 0
        yield served
        served.release()


@pytest.fixture(scope="module")
def browser(playwright):
    chromium = launch(playwright, camera=True)
    yield chromium
    chromium.close()


def parse_first(page) -> None:
    with page.expect_response(lambda r: "/api/v1/parse" in r.url) as answer:
        pick(page, photo(240, 180), "first.png")
    assert answer.value.status == 200
    settle(page)


def busy_lines(page) -> dict[str, str]:
    return page.evaluate(
        """() => Object.fromEntries(["busy-text", "busy-place", "busy-left", "busy-elapsed"]
             .map((id) => [id, document.getElementById(id).hidden ? "" :
                                document.getElementById(id).textContent]))"""
    )


@pytest.mark.parametrize(
    ("name", "viewport", "scheme"),
    [("desktop", DESKTOP, "light"), ("phone", PHONE, "dark")],
)
def test_progress_card_then_cancel_keeps_the_result(gated, browser, name, viewport, scheme):
    with browser_context(browser, viewport=viewport, color_scheme=scheme) as ctx:
        page, log = open_page(ctx, gated.url + "/")
        parse_first(page)
        before = canvas_pixels(page, "#canvas")
        legend = legend_ids(page)
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(f"{r.url} {r.failure}"))

        # Someone else's photo is being parsed, another waits: ours comes third.
        gated.hold(running=1, queued=1)
        pick(page, photo(200, 160), "second.png")
        gated.wait_for(running=1, queued=2)
        wait_until(page, "() => document.querySelector('#busy-place').textContent.includes('3')")
        wait_until(page, "() => document.querySelector('#busy-left').textContent.includes('s')")
        page.wait_for_timeout(1100)  # a tick of the elapsed clock
        lines = busy_lines(page)
        assert lines["busy-text"] == "Waiting for a turn…"
        assert lines["busy-place"] == "Place in the queue: 3"
        # three images at the server's measured seconds per image, counted down
        service = gated.queue()["service_seconds"]
        left = re.fullmatch(
            r"Time left: about (\d+) s|Time left: a little longer than usual", lines["busy-left"]
        )
        assert left, lines["busy-left"]
        assert left.group(1) is None or 1 <= int(left.group(1)) <= max(1, round(3 * service))
        assert lines["busy-elapsed"].startswith("Elapsed: 0:0")
        assert lines["busy-elapsed"] != "Elapsed: 0:00"
        shoot(page, f"index-waiting-in-queue-{name}")
        assert_accessible(page, f"progress card, {name}, {scheme}")

        page.click("#cancel")
        wait_until(page, "() => document.querySelector('#busy').hidden")
        assert page.text_content("#toast") == "Cancelled. The previous result is kept."
        assert page.text_content("#status") == "Cancelled. The previous result is kept."
        assert page.is_hidden("#error")
        assert np.array_equal(canvas_pixels(page, "#canvas"), before)
        assert legend_ids(page) == legend
        assert_accessible(page, f"cancelled, {name}, {scheme}")  # waits for the toast to show
        shoot(page, f"index-cancelled-{name}")
        assert any("/api/v1/parse" in f and "ABORTED" in f for f in failed), failed

        # The server's side: the engine is left with no work once the gate opens.
        gated.release()
        gated.wait_for(running=0, queued=0)
        assert gated.queue()["queued"] == 0 and gated.queue()["running"] == 0
        # Polling stopped with the request: no more status calls from the page.
        polls: list[str] = []
        page.on("request", lambda r: polls.append(r.url))
        page.wait_for_timeout(2000)
        assert [u for u in polls if "/api/v1/" in u] == []
        assert_clean(page, log, allow=("net::ERR_ABORTED",))


def test_kiosk_shows_place_time_left_and_elapsed_in_big_type(gated, browser):
    with browser_context(browser, viewport=PORTRAIT) as ctx:
        page, log = open_page(ctx, gated.url + "/kiosk")
        gated.hold(running=1, queued=0)
        page.click("#start")
        wait_until(page, "() => document.querySelector('#video').videoWidth > 0")
        page.click("#shutter")
        wait_screen(page, "working")
        gated.wait_for(running=1, queued=1, timeout=30)
        wait_until(page, "() => document.querySelector('#working-place').textContent.includes('2')")
        page.wait_for_timeout(1100)
        assert page.text_content("#working-text") == "Waiting for a turn…"
        assert page.text_content("#working-place") == "Place in the queue: 2"
        assert page.text_content("#working-left").startswith("Time left: ")
        assert page.text_content("#working-elapsed").startswith("Elapsed: 0:0")
        for selector in ("#working-text", "#working-place", "#working-elapsed"):
            size = page.evaluate(
                "(s) => parseFloat(getComputedStyle(document.querySelector(s)).fontSize)", selector
            )
            assert size >= 32, (selector, size)  # arm's length on 1080×1920
        shoot(page, "kiosk-waiting-in-queue-portrait")
        assert_accessible(page, "kiosk working")

        page.click("#working-cancel")
        wait_screen(page, "welcome")
        assert page.text_content("#status") == (
            "Cancelled. Back at the start; nothing of the photo is kept."
        )
        gated.release()
        gated.wait_for(running=0, queued=0)
        assert_clean(page, log, allow=("net::ERR_ABORTED",))


def test_the_page_waits_at_least_as_long_as_the_server(gated, browser):
    assert PARSE_TIMEOUT_SECONDS >= ENGINE_TIMEOUT_S
    with browser_context(browser, viewport=DESKTOP) as ctx:
        page, log = open_page(ctx, gated.url + "/")
        assert page.get_attribute("body", "data-parse-timeout-seconds") == str(
            PARSE_TIMEOUT_SECONDS
        )
        page.clock.install()
        held = []
        page.route("**/api/v1/parse*", lambda route: held.append(route))
        pick(page, photo(200, 160), "slow.png")
        for _ in range(200):
            if held:
                break
            page.wait_for_timeout(50)
        assert held, "the page sent the photo"
        page.clock.run_for(int(ENGINE_TIMEOUT_S * 1000) + 1000)
        assert page.is_visible("#busy")
        page.clock.run_for(int((PARSE_TIMEOUT_SECONDS - ENGINE_TIMEOUT_S) * 1000))
        wait_until(page, "() => !document.querySelector('#error').hidden")
        assert page.text_content("#error-title") == "This took too long."
        assert page.is_hidden("#busy")
        assert_clean(page, log)
