"""Every image the tests upload, made in memory (nothing here touches the disk).

- pixels and encoders: `pixels`, `noise`, `quadrants`, `photo`, `encode`, `png`, `jpeg`,
  `webp`, `gif`, `sample`; and back: `decode`, `decode_array`
- PNGs written by hand: `png_chunk`, `raw_png`, `png16`, `palette_png`, `replace_png_chunk`,
  `padded_png`; broken ones: `truncated_jpeg`
- decompression bombs (a few KB declaring gigapixels): `png_bomb`, `jpeg_bomb`,
  `webp_lossless_bomb`, `webp_lossy_bomb`, `webp_canvas_bomb`
- decode-cost bombs (small, valid-looking files that cost far more CPU than their size
  suggests; the container walk refuses them): `progressive_jpeg`, `jpeg_scan_bomb`,
  `jpeg_segment_flood`, `png_chunk_flood`, `png_ancillary_flood`, `webp_chunk_flood`,
  `webp_frame_flood`
- what is not an allowed image (polyglots, look-alikes, other formats): `TEXT`, `HTML`, `SVG`,
  `NOT_IMAGES`, `zip_archive`, `other_formats`
- checks for `quadrants` after a decode: `RED`…`WHITE`, `quadrant_colours`, `assert_quadrants`
- phone photos with data after the image: `MP4_VIDEO`, `motion_photo`, `png_with_stray_byte`,
  `ultra_hdr`
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}

# ---- pixels and encoders -----------------------------------------------------------------


def pixels(width: int = 128, height: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth gradient with noise: (height, width, 3) uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256])
    noise = rng.integers(0, 40, size=(3, height, width))
    return np.clip(base + noise, 0, 255).astype(np.uint8).transpose(1, 2, 0).copy()


def noise(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """Uniform RGB noise: the least compressible image."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def quadrants(width: int = 64, height: int = 48) -> Image.Image:
    """Red, green / blue, white quadrants: any flip or turn is visible, JPEG keeps them."""
    array = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    array[:h, :w] = RED
    array[:h, w:] = GREEN
    array[h:, :w] = BLUE
    array[h:, w:] = WHITE
    return Image.fromarray(array)


def photo(width: int = 320, height: int = 240, fmt: str = "PNG") -> bytes:
    """A made-up 'photo': a sky gradient and two figures, encoded in memory."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        draw.line([(0, y), (width, y)], fill=(200 - y * 60 // height, 210, 230 - y * 50 // height))
    for cx, colour in ((0.33, (60, 90, 160)), (0.68, (170, 70, 60))):
        x = cx * width
        draw.ellipse(
            [x - 0.07 * height, 0.14 * height, x + 0.07 * height, 0.34 * height],
            fill=(225, 180, 150),
        )
        draw.rounded_rectangle(
            [x - 0.12 * height, 0.36 * height, x + 0.12 * height, 0.92 * height], 8, fill=colour
        )
    return encode(image, fmt)


def encode(image: Image.Image | np.ndarray, fmt: str, **params: object) -> bytes:
    """`image` (a PIL image or (H, W[, C]) uint8 pixels) saved as `fmt` into bytes."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def png(width: int = 128, height: int = 96, *, text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    return encode(pixels(width, height), "PNG", pnginfo=info)


def jpeg(width: int = 128, height: int = 96, *, seed: int = 0, quality: int = 90) -> bytes:
    return encode(pixels(width, height, seed), "JPEG", quality=quality)


def webp(width: int = 128, height: int = 96) -> bytes:
    return encode(pixels(width, height), "WEBP", lossless=True)


def gif(width: int = 32, height: int = 32) -> bytes:
    return encode(pixels(width, height), "GIF")


def sample(mime: str, im: Image.Image | None = None, **params: object) -> bytes:
    """A small image of type `mime` (lossless for WebP unless `lossless=False` is given)."""
    im = quadrants() if im is None else im
    if mime == "image/webp":
        params.setdefault("lossless", True)
    return encode(im, FORMATS[mime], **params)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def decode_array(data: bytes) -> np.ndarray:
    """The pixels of an encoded image, as stored (no mode conversion)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).copy()


# ---- PNGs written by hand ----------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def raw_png(width: int, height: int, *, depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: IHDR, one IDAT of `rows` (filter bytes included), IEND. The rows
    need not fill the declared size."""
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def png16(width: int, height: int, color_type: int, sample: tuple[int, ...]) -> bytes:
    """A 16-bit PNG of one colour (`sample`: one value per channel of `color_type`)."""
    row = b"\x00" + struct.pack(f">{len(sample)}H", *sample) * width
    return raw_png(width, height, depth=16, color_type=color_type, rows=row * height)


def palette_png(transparent: bool) -> bytes:
    """An 8x8 palette PNG: colour 1 (200, 30, 40) everywhere but (0, 0), which is colour 0
    (black, or fully transparent)."""
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 200, 30, 40] + [0, 0, 0] * 254)
    im.putpixel((0, 0), 0)
    return encode(im, "PNG", **({"transparency": 0} if transparent else {}))


def replace_png_chunk(png: bytes, kind: bytes, payload: bytes, *, fix_crc: bool) -> bytes:
    """`png` with its first `kind` chunk's payload replaced; the CRC recomputed, or kept from
    the original chunk (`fix_crc=False`: a CRC that no longer matches)."""
    at = png.index(kind) - 4
    length = int.from_bytes(png[at : at + 4], "big")
    chunk = png_chunk(kind, payload)
    if not fix_crc:
        chunk = chunk[:-4] + png[at + 8 + length : at + 12 + length]
    return png[:at] + chunk + png[at + 12 + length :]


def padded_png(total_bytes: int, *, width: int = 96, height: int = 64, canary: str = "") -> bytes:
    """A small valid PNG grown to exactly `total_bytes` with a private ancillary chunk (`caNv`,
    skipped by decoders), with `canary` in a tEXt chunk: a cap-sized upload that decodes fast."""
    small = png(width, height, text={"Comment": canary} if canary else None)
    iend = small.rindex(b"IEND") - 4
    overhead = len(small) + 12
    if total_bytes < overhead:
        raise ValueError(f"total_bytes must be at least {overhead}")
    filler = np.random.default_rng(1).integers(0, 256, total_bytes - overhead, np.uint8).tobytes()
    out = small[:iend] + png_chunk(b"caNv", filler) + small[iend:]
    assert len(out) == total_bytes
    return out


def truncated_jpeg() -> bytes:
    data = jpeg(256, 192)
    return data[: len(data) // 2]


# ---- decompression bombs -----------------------------------------------------------------


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


# ---- not an allowed image ----------------------------------------------------------------

TEXT = b"just some text, certainly not an image\n" * 20
HTML = b"<!doctype html><html><body><script>alert(1)</script></body></html>"
SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<script>alert(1)</script><rect width="10" height="10"/></svg>'
)
NOT_IMAGES = {
    "text": TEXT,
    "html": HTML,
    "svg": SVG,
    "pdf": b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
    "html_with_png_signature": PNG_SIGNATURE + b"<!DOCTYPE html><html><script>x</script></html>",
}


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("shell.php", "<?php system($_GET['c']); ?>")
    return buffer.getvalue()


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


# ---- checks for `quadrants` --------------------------------------------------------------

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrant_colours(array: np.ndarray) -> list[tuple[int, ...]]:
    """The colours at the centres of the four quadrants of (H, W, 3) pixels, in reading order."""
    height, width = array.shape[:2]
    ys, xs = (height // 4, 3 * height // 4), (width // 4, 3 * width // 4)
    return [tuple(int(v) for v in array[y, x]) for y in ys for x in xs]


def assert_quadrants(array: np.ndarray, expected: list[tuple[int, int, int]], tol: int) -> None:
    found = quadrant_colours(array)
    for got, want in zip(found, expected, strict=True):
        assert max(abs(g - w) for g, w in zip(got, want, strict=True)) <= tol, (found, expected)


# ---- decode-cost bombs -------------------------------------------------------------------

_SOS = b"\xff\xda"
_EOI = b"\xff\xd9"


def progressive_jpeg(width: int = 64, height: int = 48) -> bytes:
    """A real progressive JPEG (libjpeg's default script: 10 scans for colour)."""
    return encode(noise(width, height), "JPEG", progressive=True, quality=90)


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
    data = encode(noise(16, 16), "PNG")
    first_idat = data.index(b"IDAT") - 4
    return data[:first_idat] + png_chunk(b"prVt", b"") * chunks + data[first_idat:]


def jpeg_segment_flood(segments: int = 200_000) -> bytes:
    """A small JPEG with `segments` empty comment segments (COM, 4 bytes each) after SOI."""
    data = encode(noise(16, 16), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * segments + data[2:]


def webp_chunk_flood(chunks: int = 200_000) -> bytes:
    """An extended WebP (VP8X) with `chunks` empty unknown chunks after its image."""
    frames = [noise(16, 16, seed) for seed in range(2)]
    data = bytearray(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]))
    data += b"XTRA\x00\x00\x00\x00" * chunks
    data[4:8] = (len(data) - 8).to_bytes(4, "little")
    return bytes(data)


def webp_frame_flood(frames: int = 2000, *, side: int = 16) -> bytes:
    """An animated WebP of `frames` tiny frames."""
    images = [noise(side, side, seed % 7) for seed in range(frames)]
    return encode(images[0], "WEBP", save_all=True, append_images=images[1:], lossless=True)


# ---- phone photos with data after the image ------------------------------------------------
# What phones write after a well-formed image: the service decodes the image and drops the rest.

# An MP4's first box (ftyp) and a little media data: what a motion photo appends after EOI.
MP4_VIDEO = (
    struct.pack(">I", 24) + b"ftypmp42" + b"\x00\x00\x00\x00" + b"mp42isom"
    + struct.pack(">I", 40) + b"mdat" + bytes(range(32))
)  # fmt: skip


def motion_photo(kind: str = "google", *, width: int = 64, height: int = 48) -> bytes:
    """A JPEG of `quadrants` with a video appended after its EOI: Google's MVIMG ("google":
    the MP4 alone) or Samsung's ("samsung": the MP4 in a `MotionPhoto_Data` block followed by
    the `SEFH` ... `SEFT` trailer directory Samsung's camera writes)."""
    still = sample("image/jpeg", quadrants(width, height))
    if kind == "google":
        return still + MP4_VIDEO
    if kind != "samsung":
        raise ValueError(f"kind must be google or samsung, not {kind!r}")
    block = b"\x00\x00\x30\x0a" + struct.pack("<I", 16) + b"MotionPhoto_Data" + MP4_VIDEO
    # SEFH: version, entry count, then per entry (marker, offset back from SEFH, length)
    directory = (
        b"SEFH"
        + struct.pack("<III", 107, 1, 0x0A30_0000)
        + struct.pack("<II", len(block), len(block))
    )
    return still + block + directory + struct.pack("<I", len(directory)) + b"SEFT"


def png_with_stray_byte(stray: bytes = b"\n") -> bytes:
    """A 1x1 palette PNG with a tRNS chunk and `stray` after IEND (as `tRNS_null_1x1.png`)."""
    im = Image.new("P", (1, 1), 0)
    im.putpalette([200, 30, 40] + [0, 0, 0] * 255)
    return encode(im, "PNG", transparency=1) + stray


def _mpf_app2(entries: list[tuple[int, int, int]]) -> bytes:
    """An APP2 segment holding an MPF index (CIPA DC-007, big-endian): MPFVersion,
    NumberOfImages and MPEntry for `entries` of (attribute, size, offset from the MP header)."""
    count = len(entries)
    ifd_size = 2 + 3 * 12 + 4
    mp_entries = b"".join(struct.pack(">IIIHH", a, s, o, 0, 0) for a, s, o in entries)
    tiff = (
        b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 3)
        + struct.pack(">HHI", 0xB000, 7, 4) + b"0100"
        + struct.pack(">HHII", 0xB001, 4, 1, count)
        + struct.pack(">HHII", 0xB002, 7, 16 * count, 8 + ifd_size)
        + struct.pack(">I", 0) + mp_entries
    )  # fmt: skip
    payload = b"MPF\x00" + tiff
    return b"\xff\xe2" + struct.pack(">H", 2 + len(payload)) + payload


def ultra_hdr(width: int = 64, height: int = 48) -> bytes:
    """An Ultra HDR photo as Android 14+ writes it, built by hand: the primary JPEG (of
    `quadrants`) with an MPF APP2 segment after its APP0, listing itself and a gain map: a
    smaller all-grey JPEG appended after the primary image's EOI."""
    primary = sample("image/jpeg", quadrants(width, height))
    gain_map = encode(Image.new("L", (width // 4, height // 4), 128), "JPEG")
    app0_end = 4 + int.from_bytes(primary[4:6], "big")  # SOI, then APP0 (JFIF)
    size = len(primary) + len(_mpf_app2([(0, 0, 0), (0, 0, 0)]))
    # offsets count from the MP header: 8 bytes into the APP2 segment (marker, length, "MPF\0")
    mp_header = app0_end + 8
    app2 = _mpf_app2([(0x030000, size, 0), (0, len(gain_map), size - mp_header)])
    return primary[:app0_end] + app2 + primary[app0_end:] + gain_map


def spy_on_the_decoder(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """A list that gets the bytes every `Image.open` is handed from now on to the end of the
    test (the real decoder still runs)."""
    seen: list[bytes] = []
    real_open = Image.open

    def spy(fp, *args, **kwargs):
        seen.append(fp.getvalue() if isinstance(fp, io.BytesIO) else bytes(fp.read()))
        if not isinstance(fp, io.BytesIO):
            fp.seek(0)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    return seen
