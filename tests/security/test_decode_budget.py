"""security.decode_budget: the decode memory estimated from the header is an upper bound of what
a decode really takes, and the budget bounds decodes in flight (slots and bytes, first come
first served, 503 after the wait, 413 for what can never fit)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from security import image_containers
from security.decode_budget import DecodeBudget, budget_for, estimate_bytes
from security.errors import Overloaded, PayloadTooLarge, UnprocessableImage
from security.uploads import UploadPolicy, load_upload, sniff_mime
from settings import Settings, SettingsError
from tests.support import images as samples
from tests.support.paths import REPO

MIB = 1024 * 1024

# ------------------------------------------------------------------------------ estimates


def _gradients(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    bands = [(x * 255).repeat(height, 0), (y * 255).repeat(width, 1), (x + y) * 127]
    return Image.fromarray(np.dstack(bands).astype(np.uint8))


def _encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def _cases(width: int, height: int) -> dict[str, bytes]:
    rgb = _gradients(width, height)
    rgba = rgb.copy()
    rgba.putalpha(rgb.getchannel(0))
    grey16 = Image.fromarray(np.asarray(rgb.getchannel(1), np.uint16) * 257)
    palette = rgb.convert("P")
    png = {"compress_level": 1}
    return {
        "png-rgb8": _encode(rgb, "PNG", **png),
        "png-rgba8": _encode(rgba, "PNG", **png),
        "png-grey16": _encode(grey16, "PNG", **png),
        "png-grey8": _encode(rgb.convert("L"), "PNG", **png),
        "png-palette": _encode(palette, "PNG", **png),
        "png-palette-transparent": _encode(palette, "PNG", transparency=0, **png),
        "png-grey-alpha": _encode(rgba.convert("LA"), "PNG", **png),
        "png-rgb-trns": _encode(rgb, "PNG", transparency=(0, 0, 0), **png),
        "png-bilevel": _encode(rgb.convert("1"), "PNG", **png),
        "jpeg-baseline": _encode(rgb, "JPEG", quality=90),
        "jpeg-progressive": _encode(rgb, "JPEG", quality=90, progressive=True),
        "jpeg-grey": _encode(rgb.convert("L"), "JPEG", quality=90),
        "jpeg-cmyk": _encode(rgb.convert("CMYK"), "JPEG", quality=90),
        "webp-lossless-alpha": _encode(rgba, "WEBP", lossless=True, method=0),
        "webp-lossy": _encode(rgb, "WEBP", quality=80, method=0),
    }


# Runs in a fresh interpreter: the peak RSS (VmHWM, reset before the decode) over the RSS
# before it, and the estimate. Pillow allocates outside tracemalloc's view, so RSS it is.
_MEASURE = """
import json, sys
from security import decode_budget, image_containers, uploads
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
data = sys.stdin.buffer.read()
uploads.load_upload(open(sys.argv[1], "rb").read())  # imports, Pillow's plugins, allocator
mime = uploads.sniff_mime(data)
estimate = decode_budget.estimate_bytes(image_containers.walk(data, mime), mime, max_side=1920)
idle = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
uploads.load_upload(data)
print(json.dumps({"growth": status("VmHWM") - idle, "estimate": estimate}))
"""


@pytest.fixture(scope="module")
def warm_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("warm") / "warm.png"
    path.write_bytes(samples.sample("image/png"))
    return path


CASES = _cases(3000, 2000)


@pytest.mark.parametrize("name", CASES)
def test_estimate_bounds_the_measured_peak(name, warm_file):
    """Each mode at 6 MP (over max_side, so JPEGs use DCT scaling and everything is reduced):
    the estimate is at least the peak RSS growth of the decode, and within 2.5x of it."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(warm_file)],
        input=CASES[name],
        capture_output=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    figures = json.loads(done.stdout)
    growth, estimate = figures["growth"], figures["estimate"]
    assert growth <= estimate <= 2.5 * growth, (growth / MIB, estimate / MIB)


def test_estimate_follows_the_header():
    """16-bit grey at the cap needs 5 bytes a pixel (I;16, its array, the high bytes); 8-bit
    grey 2; a progressive JPEG adds its full-size coefficients to the DCT-scaled image."""
    grey16 = image_containers.Layout(0, 8000, 5000, channels=1, bits=16)
    grey8 = image_containers.Layout(0, 8000, 5000, channels=1, bits=8)
    fixed = estimate_bytes(image_containers.Layout(0, 1, 1, channels=1), "image/png", max_side=1)
    assert estimate_bytes(grey16, "image/png", max_side=1) - fixed >= 40_000_000 * 5
    assert estimate_bytes(grey16, "image/png", max_side=1) > estimate_bytes(
        grey8, "image/png", max_side=1
    )
    baseline = image_containers.Layout(0, 8000, 6000, channels=3, scans=1)
    progressive = image_containers.Layout(0, 8000, 6000, channels=3, scans=10)
    difference = estimate_bytes(progressive, "image/jpeg", max_side=1920) - estimate_bytes(
        baseline, "image/jpeg", max_side=1920
    )
    assert difference == 8000 * 6000 * 3 * 2


# ----------------------------------------------------------------------------- the budget


def _hold(budget: DecodeBudget, nbytes: int) -> tuple[threading.Event, threading.Thread]:
    """A thread that holds `nbytes` of `budget` until the returned event is set."""
    held, release = threading.Event(), threading.Event()

    def run() -> None:
        with budget.reserve(nbytes, timeout=5):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    assert held.wait(5)
    return release, thread


def test_slots_bound_the_decodes_in_flight():
    budget = DecodeBudget(slots=2, memory_bytes=1000)
    first, t1 = _hold(budget, 1)
    second, t2 = _hold(budget, 1)
    assert budget.in_use == (2, 2)
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused, budget.reserve(1, timeout=0.2):
        pass
    assert time.monotonic() - started >= 0.2
    assert refused.value.status == 503 and refused.value.retry_after >= 1
    first.set()
    t1.join()
    with budget.reserve(1, timeout=1):
        assert budget.in_use == (2, 2)
    second.set()
    t2.join()
    assert budget.in_use == (0, 0)


def test_memory_bounds_the_decodes_in_flight():
    budget = DecodeBudget(slots=8, memory_bytes=100)
    release, thread = _hold(budget, 70)
    with pytest.raises(Overloaded), budget.reserve(31, timeout=0.1):
        pass
    with budget.reserve(30, timeout=0.1):
        assert budget.in_use == (2, 100)
    release.set()
    thread.join()
    with budget.reserve(100, timeout=0.1):
        pass


def test_what_can_never_fit_is_413_at_once():
    budget = DecodeBudget(slots=1, memory_bytes=100)
    started = time.monotonic()
    with pytest.raises(PayloadTooLarge, match="MiB"), budget.reserve(101, timeout=5):
        pass
    assert time.monotonic() - started < 1
    assert budget.in_use == (0, 0)


def test_first_come_first_served():
    """A large request waiting for memory is not overtaken by smaller ones that would fit."""
    budget = DecodeBudget(slots=8, memory_bytes=100)
    release, holder = _hold(budget, 60)
    order: list[str] = []

    def want(name: str, nbytes: int) -> None:
        with budget.reserve(nbytes, timeout=5):
            order.append(name)

    large = threading.Thread(target=want, args=("large", 80))
    large.start()
    time.sleep(0.1)  # the large one is first in line
    small = threading.Thread(target=want, args=("small", 10))
    small.start()
    time.sleep(0.1)
    assert order == []  # 10 would fit next to 60, but the large one came first
    release.set()
    for thread in (holder, large, small):
        thread.join(5)
    assert order == ["large", "small"]
    assert budget.in_use == (0, 0)


def test_budget_from_settings_and_defaults():
    auto = budget_for(slots=None, memory_bytes=None, memory_limit=4096 * MIB)
    assert auto.slots >= 1 and auto.memory_bytes == 1024 * MIB
    explicit = budget_for(slots=3, memory_bytes=200 * MIB, memory_limit=4096 * MIB)
    assert (explicit.slots, explicit.memory_bytes) == (3, 200 * MIB)
    settings = Settings.from_env({"M2FP_DECODE_SLOTS": "3", "M2FP_DECODE_MEMORY_MB": "200"})
    policy = UploadPolicy.from_settings(settings)
    assert (policy.decode_slots, policy.decode_memory) == (3, 200 * MIB)
    auto_settings = Settings.from_env({"M2FP_DECODE_SLOTS": "auto"})
    assert UploadPolicy.from_settings(auto_settings).decode_slots is None
    for name, value in (("M2FP_DECODE_SLOTS", "0"), ("M2FP_DECODE_MEMORY_MB", "-1")):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})
    with pytest.raises(ValueError, match="decode_slots"):
        UploadPolicy(decode_slots=0)


def test_default_pixel_cap_fits_the_default_budget():
    """At the default pixel cap (6000x4000) on a 4 GiB machine (decode budget 1 GiB): the worst
    mode, an alpha WebP (libwebp's two canvases and Pillow's copies), needs about half of it;
    every PNG and JPEG mode about a third at most (grey + alpha PNG, 12 bytes a pixel)."""
    policy = UploadPolicy()
    budget = budget_for(slots=None, memory_bytes=None, memory_limit=4096 * MIB)
    width, height = 6000, 4000
    assert width * height == policy.max_pixels

    def need(mime: str, **header: object) -> int:
        layout = image_containers.Layout(0, width, height, **header)  # type: ignore[arg-type]
        return estimate_bytes(layout, mime, max_side=policy.max_side)

    assert need("image/webp", channels=4, alpha=True) <= 0.55 * budget.memory_bytes
    others = [
        need("image/png", channels=3),
        need("image/png", channels=4, alpha=True),
        need("image/png", channels=1, bits=16),
        need("image/png", channels=1, palette=True, alpha=True),
        need("image/png", channels=2, alpha=True),
        need("image/jpeg", channels=4, scans=10),
    ]
    assert max(others) <= 0.35 * budget.memory_bytes


# ------------------------------------------------------------------ through load_upload


def test_load_upload_reserves_the_estimate_and_releases_it():
    budget = DecodeBudget(slots=1, memory_bytes=512 * MIB)
    assert load_upload(samples.sample("image/png"), budget=budget).pixels.shape == (48, 64, 3)
    assert budget.in_use == (0, 0)
    broken = samples.encode(samples.noise(64, 64), "JPEG")
    broken = broken[:400] + bytes(200) + broken[600:]  # scan data zeroed: decodes wrong or fails
    with contextlib.suppress(UnprocessableImage):  # whichever it is, the budget is released
        load_upload(broken, budget=budget)
    assert budget.in_use == (0, 0)


def test_load_upload_answers_413_and_503_from_the_budget():
    data = samples.sample("image/png", samples.noise(400, 300))
    layout = image_containers.walk(data, sniff_mime(data))
    need = estimate_bytes(layout, "image/png", max_side=UploadPolicy().max_side)
    with pytest.raises(PayloadTooLarge, match="MiB"):
        load_upload(data, budget=DecodeBudget(slots=4, memory_bytes=need - 1))
    budget = DecodeBudget(slots=1, memory_bytes=need)
    release, holder = _hold(budget, 1)
    with pytest.raises(Overloaded) as refused:
        load_upload(data, budget=budget, wait_s=0.1)
    assert refused.value.retry_after
    release.set()
    holder.join()
    assert load_upload(data, budget=budget, wait_s=0.1).original_size == (400, 300)


# Six 16-bit grey PNGs decoded at once in a fresh interpreter, with and without a budget.
_CONCURRENT = """
import json, sys, threading
from security import decode_budget, uploads
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
data = sys.stdin.buffer.read()
budget_mb = float(sys.argv[1])
budget = None
if budget_mb:
    budget = decode_budget.DecodeBudget(slots=6, memory_bytes=int(budget_mb * 2**20))
uploads.load_upload(data)
idle = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
kwargs = {"budget": budget, "wait_s": 60}
threads = [
    threading.Thread(target=uploads.load_upload, args=(data,), kwargs=kwargs) for _ in range(6)
]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"growth": status("VmHWM") - idle}))
"""


def test_six_concurrent_16_bit_decodes_stay_within_the_budget():
    """The issue's case, scaled to 12 MP: six 16-bit grey PNGs at once. With a budget of two
    decodes' estimates, the worker grows by at most that (and by more without one)."""
    grey16 = Image.fromarray(np.asarray(_gradients(4000, 3000).getchannel(0), np.uint16) * 257)
    data = _encode(grey16, "PNG", compress_level=1)
    need = estimate_bytes(image_containers.walk(data, "image/png"), "image/png", max_side=1920)
    budget_mb = 2 * need / MIB

    def growth(mb: float) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _CONCURRENT, str(mb)],
            input=data,
            capture_output=True,
            cwd=REPO,
            timeout=300,
            check=True,
        )
        return json.loads(done.stdout)["growth"]

    bounded = growth(budget_mb)
    assert bounded <= 2 * need
    assert growth(0) > bounded * 1.5
