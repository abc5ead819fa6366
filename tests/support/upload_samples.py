"""Upload test fixtures made in memory: images in every allowed format, crafted headers
(bombs, 16-bit PNGs), polyglots and look-alikes. Nothing here touches the disk."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def quadrants(width: int = 64, height: int = 48) -> Image.Image:
    """Red, green / blue, white quadrants: any flip or turn is visible, JPEG keeps them."""
    pixels = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    pixels[:h, :w] = (255, 0, 0)
    pixels[:h, w:] = (0, 255, 0)
    pixels[h:, :w] = (0, 0, 255)
    pixels[h:, w:] = (255, 255, 255)
    return Image.fromarray(pixels)


def noise(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def sample(mime: str, im: Image.Image | None = None, **params: object) -> bytes:
    """A small image of type `mime` (lossless for WebP unless `lossless=False` is given)."""
    im = quadrants() if im is None else im
    if mime == "image/webp":
        params.setdefault("lossless", True)
    return encode(im, FORMATS[mime], **params)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def raw_png(width: int, height: int, *, depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: IHDR, one IDAT of `rows` (filter bytes included), IEND."""
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def png_bomb(side: int = 30000) -> bytes:
    """A few-KB PNG whose header declares side x side grey pixels (only a few rows follow:
    a decoder that trusted the header would allocate side**2 bytes before noticing)."""
    return raw_png(side, side, depth=8, color_type=0, rows=b"\x00" * (side + 1) * 16)


def jpeg_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A small JPEG whose frame header (SOF0) is patched to declare width x height."""
    data = bytearray(encode(noise(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_lossless_bomb(width: int = 16384, height: int = 16384) -> bytes:
    """A small lossless WebP whose VP8L header is patched to declare width x height."""
    data = bytearray(encode(noise(16, 16), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    bits = int.from_bytes(data[21:25], "little")
    bits = (bits & ~0xFFFFFFF) | (width - 1) | ((height - 1) << 14)
    data[21:25] = bits.to_bytes(4, "little")
    return bytes(data)


def webp_lossy_bomb(width: int = 16383, height: int = 16383) -> bytes:
    """A small lossy WebP whose VP8 key-frame header is patched to declare width x height."""
    data = bytearray(encode(noise(16, 16), "WEBP", quality=80))
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
    data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


def webp_canvas_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """An extended WebP (VP8X) whose canvas is patched to width x height."""
    frames = [noise(16, 16, seed) for seed in range(2)]  # animated: always VP8X
    data = bytearray(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("shell.php", "<?php system($_GET['c']); ?>")
    return buffer.getvalue()


NOT_IMAGES = {
    "text": b"Just some text, renamed to look like a photo.\n",
    "html": b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>\n",
    "svg": (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" '
        b'height="10"><script>alert(1)</script></svg>\n'
    ),
    "pdf": b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
    "html_with_png_signature": b"\x89PNG\r\n\x1a\n<!DOCTYPE html><html><script>x</script></html>",
}


def other_formats() -> dict[str, bytes]:
    """Real images and archives of types that are not allowed."""
    im = quadrants(16, 12)
    return {
        "gif": encode(im, "GIF"),
        "bmp": encode(im, "BMP"),
        "tiff": encode(im, "TIFF"),
        "zip": zip_archive(),
        **NOT_IMAGES,
    }


RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrant_colours(pixels: np.ndarray) -> list[tuple[int, ...]]:
    """The colours at the centres of the four quadrants of (H, W, 3) pixels, in reading order."""
    height, width = pixels.shape[:2]
    ys, xs = (height // 4, 3 * height // 4), (width // 4, 3 * width // 4)
    return [tuple(int(v) for v in pixels[y, x]) for y in ys for x in xs]


def assert_quadrants(pixels: np.ndarray, expected: list[tuple[int, int, int]], tol: int) -> None:
    found = quadrant_colours(pixels)
    for got, want in zip(found, expected, strict=True):
        assert max(abs(g - w) for g, w in zip(got, want, strict=True)) <= tol, (found, expected)
