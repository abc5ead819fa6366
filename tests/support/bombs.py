"""Decode-cost bombs: small, valid-looking uploads whose decoding costs far more CPU or memory
than their size suggests. Made in memory; the container walk must refuse each before a decoder
runs (`security.image_containers`)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests.support.upload_samples import png_chunk

_SOS = b"\xff\xda"
_EOI = b"\xff\xd9"


def _encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def _grey_noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def progressive_jpeg(width: int = 64, height: int = 48) -> bytes:
    """A real progressive JPEG (libjpeg's default script: 10 scans for colour)."""
    return _encode(_grey_noise(width, height), "JPEG", progressive=True, quality=90)


def jpeg_scan_bomb(scans: int = 5000, *, width: int = 1024, height: int = 1024) -> bytes:
    """A progressive JPEG with `scans` extra copies of its last scan header (SOS), each with no
    entropy-coded data, before EOI. libjpeg walks the whole coefficient buffer once per scan:
    the decode costs width x height x scans while the file grows by 14 bytes per scan."""
    data = progressive_jpeg(width, height)
    last = data.rindex(_SOS)
    length = int.from_bytes(data[last + 2 : last + 4], "big")
    header = data[last : last + 2 + length]
    assert data.endswith(_EOI)
    return data[:-2] + header * scans + _EOI


def png_chunk_flood(chunks: int = 200_000, *, width: int = 64, height: int = 48) -> bytes:
    """A small PNG whose image data is split into `chunks` IDAT chunks (one byte of zlib
    stream each, the rest empty): 12 bytes of framing and a CRC per chunk, and one round trip
    through the decoder's Python chunk reader each."""
    rows = b"".join(b"\x00" + bytes(width) for _ in range(height))
    stream = zlib.compress(rows, 9)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idats = [png_chunk(b"IDAT", stream[i : i + 1]) for i in range(len(stream))]
    idats += [png_chunk(b"IDAT", b"")] * max(0, chunks - len(idats))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + b"".join(idats)
        + png_chunk(b"IEND", b"")
    )


def png_ancillary_flood(chunks: int = 200_000) -> bytes:
    """A small valid PNG with `chunks` empty private ancillary chunks (`prVt`) before IDAT."""
    data = _encode(_grey_noise(16, 16), "PNG")
    first_idat = data.index(b"IDAT") - 4
    return data[:first_idat] + png_chunk(b"prVt", b"") * chunks + data[first_idat:]


def jpeg_segment_flood(segments: int = 200_000) -> bytes:
    """A small JPEG with `segments` empty comment segments (COM, 4 bytes each) after SOI."""
    data = _encode(_grey_noise(16, 16), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * segments + data[2:]


def webp_chunk_flood(chunks: int = 200_000) -> bytes:
    """An extended WebP (VP8X) with `chunks` empty unknown chunks after its image."""
    frames = [_grey_noise(16, 16, seed) for seed in range(2)]
    data = bytearray(_encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    data += b"XTRA\x00\x00\x00\x00" * chunks
    data[4:8] = (len(data) - 8).to_bytes(4, "little")
    return bytes(data)


def webp_frame_flood(frames: int = 2000, *, side: int = 16) -> bytes:
    """An animated WebP of `frames` tiny frames."""
    images = [_grey_noise(side, side, seed % 7) for seed in range(frames)]
    return _encode(images[0], "WEBP", save_all=True, append_images=images[1:], lossless=True)


__all__ = [
    "jpeg_scan_bomb",
    "jpeg_segment_flood",
    "png_ancillary_flood",
    "png_chunk_flood",
    "progressive_jpeg",
    "webp_chunk_flood",
    "webp_frame_flood",
]
