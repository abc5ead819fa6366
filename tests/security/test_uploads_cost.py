"""security.uploads and security.image_containers, decode cost: files whose decoding would cost
far more CPU than their size suggests are refused by the container walk (422), before any
decoder runs; the real files they imitate still pass."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from security import image_containers
from security.errors import PayloadTooLarge, UnprocessableImage
from security.image_containers import MAX_CHUNKS, MAX_SCANS, MAX_SEGMENTS
from security.uploads import (
    SCANS_AT_THE_CAP,
    UploadPolicy,
    check_upload,
    decode_image,
    load_upload,
)
from tests.support import images as samples

# ------------------------------------------------------------------------------ JPEG scans


def _scans(data: bytes) -> int:
    return image_containers.walk(data, "image/jpeg").scans


def test_real_progressive_jpegs_have_about_ten_scans_and_pass():
    colour = samples.progressive_jpeg()
    grey = samples.encode(samples.noise().convert("L"), "JPEG", progressive=True)
    assert _scans(colour) == 10 and _scans(grey) == 6
    assert load_upload(colour).pixels.shape == (48, 64, 3)
    assert load_upload(grey).pixels.shape == (48, 64, 3)


def test_scan_bomb_is_refused_by_the_walk_before_decoding():
    """The issue's bomb: thousands of empty SOS headers before EOI (a valid file; libjpeg spends
    a full pass over the coefficients on each, about 1 s per 3,000 scans of 1 MP here)."""
    data = samples.jpeg_scan_bomb(5000, width=1024, height=1024)
    with pytest.raises(image_containers.TooCostly, match="scans"):
        image_containers.walk(data, "image/jpeg")
    started = time.perf_counter()
    with pytest.raises(UnprocessableImage, match="too much to decode") as refused:
        load_upload(data)
    assert refused.value.status == 422
    assert time.perf_counter() - started < 0.5  # the walk, not a decode


def test_scan_count_limit_is_exact():
    extra = MAX_SCANS - 10
    assert _scans(samples.jpeg_scan_bomb(extra)) == MAX_SCANS
    check_upload(samples.jpeg_scan_bomb(extra))
    with pytest.raises(UnprocessableImage, match=f"more than {MAX_SCANS} scans"):
        check_upload(samples.jpeg_scan_bomb(extra + 1))


def test_pixels_times_scans_stay_within_the_budget():
    """Under the scan count limit, a large image may still have only so many scans: the budget
    is the pixel cap x SCANS_AT_THE_CAP pixel-scans."""
    width, height = 64, 48
    policy = UploadPolicy(max_pixels=width * height * 2)  # budget: 2 x 16 = 32 full scans
    allowed = samples.jpeg_scan_bomb(2 * SCANS_AT_THE_CAP - 10, width=width, height=height)
    over = samples.jpeg_scan_bomb(2 * SCANS_AT_THE_CAP - 9, width=width, height=height)
    assert load_upload(allowed, policy=policy).original_size == (width, height)
    with pytest.raises(UnprocessableImage, match="pixels x scans"):
        check_upload(over, policy=policy)


def test_decode_image_alone_applies_the_same_budget():
    with pytest.raises(UnprocessableImage, match="scans"):
        decode_image(samples.jpeg_scan_bomb(1000), mime="image/jpeg")


# ------------------------------------------------------------------------- segment counts


def test_jpeg_segment_flood_is_refused():
    assert load_upload(samples.jpeg_segment_flood(MAX_SEGMENTS - 20)).pixels.shape == (16, 16, 3)
    with pytest.raises(UnprocessableImage, match=f"more than {MAX_SEGMENTS} segments"):
        check_upload(samples.jpeg_segment_flood(200_000))


def test_jpeg_fill_bytes_are_skipped_in_one_step():
    """Fill bytes (0xFF) may precede any marker; 4 MB of them used to cost a Python loop
    iteration each."""
    data = samples.encode(samples.noise(16, 16), "JPEG")
    padded = data[:2] + b"\xff" * 4_000_000 + data[2:]
    started = time.perf_counter()
    layout = image_containers.walk(padded, "image/jpeg")
    assert time.perf_counter() - started < 0.5
    assert (layout.width, layout.height, layout.end) == (16, 16, len(padded))


# ----------------------------------------------------------------------- PNG and WebP chunks


@pytest.mark.parametrize("build", [samples.png_chunk_flood, samples.png_ancillary_flood])
def test_png_chunk_floods_are_refused(build):
    data = build(200_000)
    started = time.perf_counter()
    with pytest.raises(UnprocessableImage, match=f"more than {MAX_CHUNKS} chunks"):
        load_upload(data)
    assert time.perf_counter() - started < 0.5


def test_png_with_many_idat_chunks_under_the_limit_is_accepted():
    """Encoders that write one IDAT per row (or libpng's 8 KiB) stay far under the limit."""
    data = samples.png_chunk_flood(MAX_CHUNKS - 2)
    assert load_upload(data).pixels.shape == (48, 64, 3)


def test_interlaced_png_is_bounded_by_the_pixel_cap_like_any_other():
    """Adam7 interlacing costs the decoder seven passes, each over a part of the image: a
    constant factor, which the pixel cap bounds; it is accepted and decodes right."""
    im = samples.quadrants(64, 48)
    data = _interlaced_png(im)
    assert data[8 + 8 + 12] == 1  # IHDR interlace method: Adam7
    assert samples.quadrant_colours(load_upload(data).pixels) == samples.quadrant_colours(
        load_upload(samples.encode(im, "PNG")).pixels
    )
    with pytest.raises(PayloadTooLarge, match="pixels"):
        check_upload(data, policy=UploadPolicy(max_pixels=64 * 48 - 1))


def _interlaced_png(im: Image.Image) -> bytes:
    """Adam7 PNG written by hand (Pillow does not write interlaced PNGs)."""
    pixels = np.asarray(im)
    height, width = pixels.shape[:2]
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2)]
    passes.append((0, 1, 1, 2))
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + samples.png_chunk(b"IHDR", header)
        + samples.png_chunk(b"IDAT", zlib.compress(raw))
        + samples.png_chunk(b"IEND", b"")
    )


def test_webp_chunk_flood_is_refused():
    with pytest.raises(UnprocessableImage, match=f"more than {MAX_CHUNKS} chunks"):
        load_upload(samples.webp_chunk_flood(200_000))


def test_animated_webp_with_many_frames_decodes_only_its_first():
    """2,000 frames (one ANMF chunk each): only the first is decoded, in milliseconds."""
    data = samples.webp_frame_flood(2000)
    started = time.perf_counter()
    decoded = load_upload(data)
    assert decoded.pixels.shape == (16, 16, 3)
    assert time.perf_counter() - started < 1.0
