"""Support for the page tests: the real app served on 127.0.0.1, headless Chromium, probes.

The app runs in a real WSGI server (werkzeug's `make_server`, threaded) on a port the OS picks;
Chromium is Debian's (`/usr/bin/chromium`), driven by Playwright, never a downloaded one.
A probe script added before the page's own scripts records what the page must not leave behind
(object URLs, camera streams) and every CSP violation; it wraps the real browser functions and
changes none of their behaviour.
"""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as coco_mask
from werkzeug.serving import make_server

from tests.support import images
from tests.support.paths import REPO
from tests.support.servers import serving

SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FAKE_CAMERA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 375, "height": 740}

# Settings every test app gets: CPU, no warm-up, limits out of the way unless a test sets them.
BASE_SETTINGS: dict[str, Any] = {
    "device": "cpu",
    "warmup": False,
    "rate_limit": "10000 per minute",
    "ban_after": 10000,
}

PROBE_SCRIPT = """
(() => {
  const probe = { violations: [], created: [], revoked: [], streams: [] };
  Object.defineProperty(window, "__probe", { value: probe });
  document.addEventListener("securitypolicyviolation", (e) => {
    probe.violations.push(`${e.violatedDirective} ${e.blockedURI}`);
  });
  const create = URL.createObjectURL.bind(URL);
  const revoke = URL.revokeObjectURL.bind(URL);
  URL.createObjectURL = (object) => {
    const url = create(object);
    probe.created.push(url);
    return url;
  };
  URL.revokeObjectURL = (url) => {
    probe.revoked.push(url);
    revoke(url);
  };
  const media = navigator.mediaDevices;
  if (media && media.getUserMedia) {
    const real = media.getUserMedia.bind(media);
    media.getUserMedia = async (constraints) => {
      const stream = await real(constraints);
      probe.streams.push(stream);
      return stream;
    };
  }
})();
"""


# ---- the app -------------------------------------------------------------------------------


def make_app(model_dir: Path, **settings: Any):
    """The real service app (`app.create_app`) on a tiny model directory."""
    from app import create_app

    return create_app({**BASE_SETTINGS, "model_dir": Path(model_dir), **settings})


@dataclass(frozen=True)
class LiveServer:
    """A WSGI app served by werkzeug in a thread on 127.0.0.1, on a free port (`serve`)."""

    app: Any
    url: str

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll /readyz until the model is loaded."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except urllib.error.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}/readyz never answered 200")
            time.sleep(0.1)


@contextmanager
def serve(app) -> Iterator[LiveServer]:
    """Serve `app` until the block ends, then stop the server and the app's engine."""
    try:
        with serving(make_server("127.0.0.1", 0, app, threaded=True)) as server:
            live = LiveServer(app, f"http://127.0.0.1:{server.server_port}")
            live.wait_ready()
            yield live
    finally:
        close_app(app)


def close_app(app) -> None:
    """Stop the engine's batch thread (the app owns it)."""
    app.extensions["m2fp"].close()


# ---- the browser ---------------------------------------------------------------------------


def launch(playwright, *, camera: bool):
    args = CHROMIUM_ARGS + (FAKE_CAMERA_ARGS if camera else [])
    return playwright.chromium.launch(executable_path=CHROMIUM, args=args)


class PageLog:
    """Console messages and uncaught errors of one page."""

    def __init__(self, page) -> None:
        self.console: list[tuple[str, str]] = []
        self.errors: list[str] = []
        page.on("console", lambda m: self.console.append((m.type, m.text)))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def problems(self, allow: tuple[str, ...] = ()) -> list[str]:
        """Errors and warnings, minus the network errors a test provoked on purpose."""
        found = [f"pageerror: {e}" for e in self.errors]
        for kind, text in self.console:
            if kind in ("error", "warning") and not any(a in text for a in allow):
                found.append(f"console.{kind}: {text}")
        return found


@contextmanager
def browser_context(browser, **options: Any) -> Iterator[Any]:
    """A fresh browser context (own storage, own permissions), closed at the end."""
    context = browser.new_context(**options)
    try:
        yield context
    finally:
        context.close()


def open_page(context, url: str):
    """A page with the probe and a log; returns (page, log)."""
    page = context.new_page()
    log = PageLog(page)
    page.add_init_script(PROBE_SCRIPT)
    page.goto(url)
    return page, log


def assert_clean(page, log: PageLog, allow: tuple[str, ...] = ()) -> None:
    """No CSP violation, no script error, no console error or warning."""
    violations = page.evaluate("() => window.__probe.violations")
    assert violations == [], f"CSP violations: {violations}"
    assert log.problems(allow) == []


def wait_until(page, expression: str, timeout: float = 15.0, arg: Any = None) -> Any:
    """Poll a JS function expression until it returns something truthy.

    (Playwright's own `wait_for_function` evaluates a string with eval, which the page's CSP
    rightly refuses; `page.evaluate` goes through the debugger protocol instead.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        page.wait_for_timeout(50)


class FileChoosers:
    """File pickers the page opens. Listen before the action that opens one: Playwright turns
    interception on without waiting, and a click on key down can beat a listener added just
    before it (the picker then opens natively, unseen)."""

    def __init__(self, page) -> None:
        self.page = page
        self.seen: list = []
        page.on("filechooser", lambda chooser: self.seen.append(chooser))

    def next(self, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while not self.seen:
            if time.monotonic() > deadline:
                raise AssertionError("no file picker opened")
            self.page.wait_for_timeout(50)
        return self.seen.pop(0)


def canvas_pixels(page, selector: str) -> np.ndarray:
    """The canvas' pixels as (H, W, 4) uint8, read in the page."""
    found = page.evaluate(
        """(selector) => {
          const canvas = document.querySelector(selector);
          if (!canvas.width || !canvas.height) return { width: 0, height: 0, data: "" };
          const ctx = canvas.getContext("2d");
          const bytes = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
          let text = "";
          for (let i = 0; i < bytes.length; i += 0x8000) {
            text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
          }
          return { width: canvas.width, height: canvas.height, data: btoa(text) };
        }""",
        selector,
    )
    data = np.frombuffer(base64.b64decode(found["data"]), dtype=np.uint8)
    return data.reshape(found["height"], found["width"], 4)


def drop_file(page, data: bytes, name: str, mime: str, *, event: str = "drop") -> None:
    """Drop (or paste) a file on the page the way a real drag or paste delivers it."""
    page.evaluate(
        """([b64, name, mime, event]) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], name, { type: mime }));
          if (event === "paste") {
            const init = { clipboardData: transfer, bubbles: true };
            document.dispatchEvent(new ClipboardEvent("paste", init));
            return;
          }
          const target = document.querySelector("main");
          const init = { dataTransfer: transfer, bubbles: true, cancelable: true };
          for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, init));
          }
        }""",
        [base64.b64encode(data).decode(), name, mime, event],
    )


def storage_state(page) -> dict:
    """Everything a page could have kept in the browser."""
    return page.evaluate(
        """async () => ({
          local: localStorage.length,
          session: sessionStorage.length,
          cookies: document.cookie,
          databases: (await indexedDB.databases()).map((d) => d.name),
          caches: await caches.keys(),
          workers: (await navigator.serviceWorker.getRegistrations()).length,
        })"""
    )


EMPTY_STORAGE = {
    "local": 0,
    "session": 0,
    "cookies": "",
    "databases": [],
    "caches": [],
    "workers": 0,
}


def leftovers(page) -> dict:
    """What of a photo or result is still reachable in the DOM and the probe."""
    return page.evaluate(
        """() => ({
          images: [...document.images].filter((i) => i.src).length,
          blobRefs: [...document.querySelectorAll("*")].flatMap((el) =>
              [...el.attributes].filter((a) => a.value.includes("blob:")).map((a) => a.name)),
          canvases: [...document.querySelectorAll("canvas")].map((c) => c.width * c.height),
          videoSource: [...document.querySelectorAll("video")].some((v) => v.srcObject || v.src),
          liveTracks: window.__probe.streams.flatMap((s) => s.getTracks())
              .filter((t) => t.readyState !== "ended").length,
          unrevoked: window.__probe.created.filter((u) => !window.__probe.revoked.includes(u)),
        })"""
    )


def shoot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def decode_label_map(answer: dict) -> np.ndarray:
    return images.decode_array(base64.b64decode(answer["label_map"]["data"]))


def parse_json(text: str) -> dict:
    return json.loads(text)


def is_parse(response) -> bool:
    return "/api/v1/parse" in response.url


def settle(page) -> None:
    """Wait for the result (or an error) to be on screen and drawn."""
    wait_until(
        page,
        """() => document.querySelector("#busy").hidden &&
                 (!document.querySelector("#workspace").hidden ||
                  !document.querySelector("#error").hidden)""",
    )
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")


def pick(page, data: bytes, name: str = "photo.png", mime: str = "image/png") -> None:
    page.set_input_files("#file-input", files=[{"name": name, "mimeType": mime, "buffer": data}])


def parse_by_picking(page, data: bytes | None = None) -> dict:
    with page.expect_response(is_parse) as answer:
        pick(page, data or images.photo())
    assert answer.value.status == 200
    result = answer.value.json()
    settle(page)
    return result


def rle_mask(mask: dict) -> np.ndarray:
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode({"size": mask["size"], "counts": mask["counts"].encode()}) > 0


def wait_screen(page, name: str, timeout: float = 20.0) -> None:
    wait_until(page, f"() => document.querySelector('#kiosk').dataset.state === '{name}'", timeout)


def take_photo(page) -> None:
    page.click("#start")
    wait_screen(page, "camera")
    wait_until(page, "() => document.querySelector('#video').videoWidth > 0")
    assert camera_live(page)
    page.click("#shutter")
    wait_until(page, "() => !document.querySelector('#countdown').hidden")
    assert page.text_content("#countdown") in ("3", "2")
    wait_screen(page, "result")
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r()))")


def legend_ids(page) -> list[int]:
    return page.eval_on_selector_all("#legend li", "(items) => items.map((li) => li.dataset.id)")


def screen(page) -> str:
    return page.evaluate("() => document.querySelector('#kiosk').dataset.state")


def camera_live(page) -> bool:
    return page.evaluate(
        """() => { const v = document.querySelector("#video");
                   return v.srcObject !== null && v.videoWidth > 0 && !v.paused; }"""
    )
