"""Images made in memory for the service tests: valid ones, hostile ones, canaries."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin


def pixels(width: int = 128, height: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth gradient with noise: (height, width, 3) uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256])
    noise = rng.integers(0, 40, size=(3, height, width))
    return np.clip(base + noise, 0, 255).astype(np.uint8).transpose(1, 2, 0).copy()


def encode(array: np.ndarray, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt, **params)
    return out.getvalue()


def png(width: int = 128, height: int = 96, *, text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    return encode(pixels(width, height), "PNG", pnginfo=info)


def jpeg(width: int = 128, height: int = 96) -> bytes:
    return encode(pixels(width, height), "JPEG", quality=90)


def webp(width: int = 128, height: int = 96) -> bytes:
    return encode(pixels(width, height), "WEBP", lossless=True)


def gif(width: int = 32, height: int = 32) -> bytes:
    return encode(pixels(width, height), "GIF")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def padded_png(total_bytes: int, *, width: int = 96, height: int = 64, canary: str = "") -> bytes:
    """A small valid PNG grown to exactly `total_bytes` with a private ancillary chunk (`caNv`,
    skipped by decoders), with `canary` in a tEXt chunk: a cap-sized upload that decodes fast."""
    small = png(width, height, text={"Comment": canary} if canary else None)
    iend = small.rindex(b"IEND") - 4
    overhead = len(small) + 12
    if total_bytes < overhead:
        raise ValueError(f"total_bytes must be at least {overhead}")
    filler = np.random.default_rng(1).integers(0, 256, total_bytes - overhead, np.uint8).tobytes()
    out = small[:iend] + _chunk(b"caNv", filler) + small[iend:]
    assert len(out) == total_bytes
    return out


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A few-KB PNG whose header declares `width` x `height` RGB pixels (a decompression bomb:
    the deflate stream of one zero-filled row repeated would inflate to gigabytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (width * 3)
    stream = zlib.compressobj(9)
    data = stream.compress(row * 64) + stream.flush()  # the first rows only: a few KB
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    data = jpeg(256, 192)
    return data[: len(data) // 2]


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<script>alert(1)</script><rect width="10" height="10"/></svg>'
)
HTML = b"<!doctype html><html><body><script>alert(1)</script></body></html>"
TEXT = b"just some text, certainly not an image\n" * 20


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
