"""A fast PNG writer for 8-bit images: numpy row filtering and ISA-L's deflate.

The service encodes a full-size overlay on every request. zlib's deflate, even at level 1, is
a visible share of a parse on the CPU and far more of one on a GPU; ISA-L (the `isal` package)
compresses the same bytes an order of magnitude faster to a similar size (docs/performance.md).
The container around it is PNG's own few chunks (ISO/IEC 15948): signature, IHDR, PLTE for
palette images, one IDAT holding a zlib stream of the filtered rows, IEND, each with its CRC-32.

Every row uses the "Up" filter (the byte difference from the row above), which numpy computes
in one vectorised subtraction and which suits photographs and flat overlay regions alike.
Decoders only need to undo it, so any PNG reader gives back the exact pixels.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from isal import isal_zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR colour types for 8-bit samples: greyscale, RGB, palette, RGBA
_COLOR_TYPES = {1: 0, 3: 2, 4: 6}
_PALETTE_TYPE = 3
_FILTER_UP = 2
# ISA-L levels run 0..3; on overlays level 3 saves little size for more time
COMPRESS_LEVEL = 1


def encode_png(array: np.ndarray, *, palette: np.ndarray | None = None) -> bytes:
    """Encode a uint8 image as PNG bytes, in memory.

    Args:
        array: (H, W) greyscale, (H, W, 3) RGB or (H, W, 4) RGBA, uint8. With `palette`, an
            (H, W) array of palette indices.
        palette: (N, 3) uint8 RGB colours, N <= 256: write an indexed-colour PNG whose
            pixel values are the indices (a viewer shows the colours).

    Returns:
        The PNG file's bytes; any PNG decoder gives back exactly `array`.

    Raises:
        ValueError: a shape, dtype or palette this writer does not take.
    """
    arr = np.asarray(array)
    if arr.dtype != np.uint8 or arr.size == 0:
        raise ValueError(f"image must be a non-empty uint8 array, got {arr.dtype} {arr.shape}")
    channels = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else 0)
    if channels not in _COLOR_TYPES:
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    height, width = arr.shape[:2]
    chunks = []
    if palette is None:
        color_type = _COLOR_TYPES[channels]
    else:
        pal = np.asarray(palette)
        if channels != 1 or pal.dtype != np.uint8 or pal.ndim != 2 or pal.shape[1] != 3:
            raise ValueError("a palette image is (H, W) indices with an (N, 3) uint8 palette")
        if not 0 < len(pal) <= 256:
            raise ValueError(f"a palette has 1 to 256 colours, got {len(pal)}")
        color_type = _PALETTE_TYPE
        chunks.append(_chunk(b"PLTE", pal.tobytes()))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    idat = isal_zlib.compress(_filter_up(arr.reshape(height, width * channels)), COMPRESS_LEVEL)
    return b"".join(
        [SIGNATURE, _chunk(b"IHDR", ihdr), *chunks, _chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
    )


def _filter_up(rows: np.ndarray) -> memoryview:
    """Each row prefixed with filter type 2 and replaced by its difference from the row
    above (the first row's "above" is zeros), modulo 256."""
    height, stride = rows.shape
    # (rows, 1 filter byte + row bytes)
    out = np.empty((height, stride + 1), dtype=np.uint8)
    out[:, 0] = _FILTER_UP
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8 arithmetic wraps modulo 256
    return memoryview(out).cast("B")


def _chunk(kind: bytes, data: bytes) -> bytes:
    """length, type, data, CRC-32 of type + data."""
    crc = zlib.crc32(data, zlib.crc32(kind))
    return b"".join([struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)])


__all__ = ["COMPRESS_LEVEL", "encode_png"]
