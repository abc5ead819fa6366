"""The page's own PNG and COCO RLE decoders (static/js/png.js, result.js), run in Chromium and
checked against Pillow and pycocotools on the same data."""

from __future__ import annotations

import base64
import warnings

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright
from pycocotools import mask as coco_mask

from tests.support import images
from tests.support.pages import assert_clean, launch, make_app, open_page, serve

pytestmark = pytest.mark.browser

DECODE_PNG = """async (b64) => {
  const { decodePng, base64ToBytes } = await import("/static/js/png.js");
  const png = await decodePng(base64ToBytes(b64));
  let text = "";
  for (let i = 0; i < png.data.length; i += 0x8000) {
    text += String.fromCharCode(...png.data.subarray(i, i + 0x8000));
  }
  return { width: png.width, height: png.height, channels: png.channels, data: btoa(text) };
}"""

DECODE_RLE = """async (rle) => {
  const { decodeRle } = await import("/static/js/result.js");
  return Array.from(decodeRle(rle));
}"""


@pytest.fixture(scope="module")
def page(tiny_model_dir):
    with serve(make_app(tiny_model_dir)) as live, sync_playwright() as p:
        chromium = launch(p, camera=False)
        page, log = open_page(chromium.new_context(), live.url + "/")
        yield page
        assert_clean(page, log)
        chromium.close()


def encode(image: Image.Image, **options) -> str:
    """`image` as a base64 PNG, as the API sends it."""
    return base64.b64encode(images.encode(image, "PNG", **options)).decode()


def decoded(page, b64: str) -> np.ndarray:
    found = page.evaluate(DECODE_PNG, b64)
    data = np.frombuffer(base64.b64decode(found["data"]), dtype=np.uint8)
    shape = (found["height"], found["width"], found["channels"])
    return data.reshape(shape)[..., 0] if found["channels"] == 1 else data.reshape(shape)


SIZES = [(1, 1), (7, 13), (48, 64), (201, 333)]


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_label_maps_decode_exactly(page, height, width):
    rng = np.random.default_rng(height * 1000 + width)
    # Blocky like a real label map (long runs, which PNG filters treat differently) plus noise.
    ids = rng.integers(0, 20, size=(height, width), dtype=np.uint8)
    ids[: height // 2] = ids[: height // 2, :1]
    grey = Image.fromarray(ids)
    assert np.array_equal(decoded(page, encode(grey)), ids)
    palette = grey.copy()
    palette.putpalette(bytes(range(60)) * 4, rawmode="RGB")
    assert np.array_equal(decoded(page, encode(palette)), ids)


@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_low_bit_depths_decode(page, height, width, bits):
    rng = np.random.default_rng(bits * 7 + width)
    if bits == 1:
        mask = rng.random((height, width)) > 0.5
        got = decoded(page, encode(Image.fromarray(mask)))
        assert np.array_equal(got > 0, mask)
        assert set(np.unique(got)) <= {0, 255}
    else:
        ids = rng.integers(0, 2**bits, size=(height, width), dtype=np.uint8)
        image = Image.fromarray(ids).convert("P")
        image.putpalette(bytes(range(3 * 2**bits)), rawmode="RGB")
        got = decoded(page, encode(image, bits=bits))
        assert np.array_equal(got, ids)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "I;16"])
def test_colour_and_sixteen_bit_pngs_decode(page, mode):
    rng = np.random.default_rng(3)
    if mode == "I;16":
        values = rng.integers(0, 65536, size=(37, 29), dtype=np.uint16)
        got = decoded(page, encode(Image.fromarray(values)))
        assert np.array_equal(got, (values >> 8).astype(np.uint8))
        return
    channels = len(mode)
    values = rng.integers(0, 256, size=(37, 29, channels), dtype=np.uint8)
    got = decoded(page, encode(Image.fromarray(values)))
    assert np.array_equal(got, values)


def test_a_non_png_is_refused(page):
    message = page.evaluate(
        """async () => {
          const { decodePng } = await import("/static/js/png.js");
          try { await decodePng(new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3, 4, 5])); }
          catch (e) { return `${e.name}: ${e.message}`; }
          return "decoded";
        }"""
    )
    assert message == "Error: not a PNG"


MASKS = {
    "empty": np.zeros((9, 11), dtype=np.uint8),
    "full": np.ones((9, 11), dtype=np.uint8),
    "pixel": np.ones((1, 1), dtype=np.uint8),
    "column": np.pad(np.ones((40, 1), dtype=np.uint8), ((0, 0), (5, 7))),
    "random": (np.random.default_rng(0).random((123, 77)) > 0.6).astype(np.uint8),
    "blob": (np.hypot(*np.mgrid[-60:60, -90:90]) < 50).astype(np.uint8),
}


@pytest.mark.parametrize("name", list(MASKS))
def test_coco_rle_decodes_like_pycocotools(page, name):
    mask = MASKS[name]
    rle = coco_mask.encode(np.asfortranarray(mask))
    compressed = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    got = np.array(page.evaluate(DECODE_RLE, compressed), dtype=np.uint8).reshape(mask.shape)
    assert np.array_equal(got, mask)
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation, not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        assert np.array_equal(coco_mask.decode(rle), mask)
    # The uncompressed form (a list of runs, column-major) decodes the same.
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0, *runs]
    got = page.evaluate(DECODE_RLE, {"size": list(mask.shape), "counts": runs})
    assert np.array_equal(np.array(got, dtype=np.uint8).reshape(mask.shape), mask)
