"""m2fp.png: PNGs that any decoder reads back to the exact pixels (Pillow, and a by-hand
decoder that checks the chunk layout, the CRCs and undoes the Up filter)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from m2fp.labels import PALETTE
from m2fp.png import SIGNATURE, encode_png


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == SIGNATURE
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        out.append((kind, body))
        pos += 12 + length
    return out


def _decode_by_hand(data: bytes) -> tuple[np.ndarray, int]:
    chunks = _chunks(data)
    assert [k for k, _ in chunks][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    channels = {0: 1, 2: 3, 3: 1, 6: 4}[color]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(height, width * channels + 1)
    assert depth == 8 and set(rows[:, 0].tolist()) == {2}  # every row uses the Up filter
    pixels = np.cumsum(rows[:, 1:], axis=0, dtype=np.uint64) % 256  # undo Up
    shape = (height, width) if channels == 1 else (height, width, channels)
    return pixels.astype(np.uint8).reshape(shape), color


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 7), (9, 1), (37, 53), (1, 1, 3), (40, 33, 3), (5, 8, 4), (64, 31, 4)]
)
def test_round_trip_exact(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(image)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)
    by_hand, color = _decode_by_hand(data)
    np.testing.assert_array_equal(by_hand, image)
    channels = 1 if image.ndim == 2 else image.shape[2]
    assert color == {1: 0, 3: 2, 4: 6}[channels]  # greyscale, RGB, RGBA


def test_non_contiguous_input() -> None:
    base = np.random.default_rng(1).integers(0, 256, (50, 60, 4), dtype=np.uint8)
    view = base[::2, 5:45, :3]  # strided rows and channels
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(view)))), view)


def test_palette_image_keeps_indices_and_shows_colours() -> None:
    ids = np.random.default_rng(2).integers(0, 20, (30, 40), dtype=np.uint8)
    data = encode_png(ids, palette=PALETTE)
    image = Image.open(io.BytesIO(data))
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), ids)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), PALETTE[ids])
    plte = dict(_chunks(data))[b"PLTE"]
    assert plte == PALETTE.tobytes()


def test_compresses_flat_regions() -> None:
    flat = np.full((512, 512, 3), (12, 200, 90), dtype=np.uint8)
    assert len(encode_png(flat)) < flat.nbytes // 100


@pytest.mark.parametrize(
    ("array", "palette", "match"),
    [
        (np.zeros((4, 4), np.float32), None, "uint8"),
        (np.zeros((0, 4), np.uint8), None, "non-empty"),
        (np.zeros((4, 4, 2), np.uint8), None, r"\(H, W, 3\)"),
        (np.zeros((4,), np.uint8), None, r"\(H, W, 3\)"),
        (np.zeros((4, 4, 3), np.uint8), PALETTE, "palette image"),
        (np.zeros((4, 4), np.uint8), np.zeros((300, 3), np.uint8), "1 to 256"),
    ],
)
def test_refuses_what_it_cannot_write(array, palette, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_png(array, palette=palette)
