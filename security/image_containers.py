"""Walk the container of a JPEG, PNG or WebP file without decoding it.

`walk(data, mime)` follows the structure from the first byte to the end of the image and
returns where the image ends and the size its header declares. It never decompresses anything,
so it runs in microseconds to a few milliseconds on a 10 MB file and allocates nothing in
proportion to the declared pixel count. `security.uploads` uses it to hand the decoder only the
image (bytes appended after it, such as a motion photo's video, reach no decoder; the strict
policy refuses them) and to refuse header bombs before any decoder runs.

- JPEG (ITU-T T.81 Annex B): markers and length-prefixed segments from SOI; each SOS is followed
  through its entropy-coded data (where 0xFF is only ever followed by 0x00 stuffing or a restart
  marker) to the next marker; ends after EOI. The size comes from the first SOF segment. The
  primary image of an MPO / Ultra HDR file ends after the last image its MPF index lists
  (CIPA DC-007), provided each of those is itself a well-formed JPEG.
- PNG: signature, IHDR first, then length/type/data/CRC chunks (CRC checked) to IEND.
- WebP: RIFF header, chunks (padded to even sizes) to the RIFF length; VP8, VP8L or VP8X first.

Decode cost is bounded here too, before anything decodes: a file may hold at most
`MAX_SEGMENTS` JPEG segments, `MAX_SCANS` JPEG scans, `MAX_CHUNKS` PNG or WebP chunks. A
progressive JPEG's decoder walks its whole coefficient buffer once per scan (even an empty one),
and every PNG chunk is a round trip through Pillow's Python chunk reader, so these counts, not
the byte count, set the CPU time; `security.uploads` also bounds width x height x scans.

Errors: `NotThisFormat` when the bytes only start like the format (a signature followed by
something else), `Broken` when the structure is damaged or truncated, `TooCostly` when it is
well formed but its counts exceed the limits above.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

JPEG, PNG, WEBP = "image/jpeg", "image/png", "image/webp"

# libjpeg's progressive script writes 10 scans for a colour image (6 for grey), mozjpeg's
# optimised scans 9 to 13, a baseline file 1 (3 non-interleaved); a 4-component progressive file
# about 14. 64 leaves a wide margin for unusual encoders while bounding the per-scan work: the
# decoder walks the whole coefficient buffer once per scan, even for a scan with no data.
MAX_SCANS = 64
# Segments of one JPEG image besides the scans' data: APPn, DQT, DHT (one before each scan in
# an optimised progressive file), SOF, DRI, COM: tens in real files, ~140 for a 64-scan file.
MAX_SEGMENTS = 1024
# PNG: libpng writes 8 KiB IDAT chunks (1,280 in a 10 MB file), some streaming encoders one per
# row (8,000 for an 8000-row image). WebP: an animation is one ANMF chunk per frame. 20,000
# chunks cost Pillow about 0.1 s; 200,000 empty ones cost it 1.7 s and the walk 0.8 s.
MAX_CHUNKS = 20_000


@dataclass(frozen=True)
class Layout:
    end: int  # offset just past the image: what a decoder is handed is data[:end]
    width: int  # as the header declares it (before EXIF orientation)
    height: int
    channels: int = 3  # samples per pixel as decoded (a palette index counts as 1)
    bits: int = 8  # bits per sample (JPEG precision, PNG bit depth)
    scans: int = 1  # JPEG: SOS segments; PNG, WebP: 1
    palette: bool = False  # PNG colour type 3: expanded to RGB or RGBA when converted
    alpha: bool = False  # PNG: an alpha channel or a tRNS chunk; WebP: VP8X alpha or VP8L


class NotThisFormat(ValueError):
    """The bytes start like the format but are not it."""


class Broken(ValueError):
    """The format is right but its structure is damaged or truncated."""


class TooCostly(ValueError):
    """The structure is well formed but would cost too much to decode (too many scans,
    segments or chunks)."""


def walk(data: bytes, mime: str) -> Layout:
    """The layout of the image of type `mime` at the start of `data`."""
    if mime == JPEG:
        return _jpeg(data, 0, len(data), primary=True)
    if mime == PNG:
        return _png(data)
    if mime == WEBP:
        return _webp(data)
    raise ValueError(f"no container walker for {mime!r}")


def only_zeros(data: bytes, start: int, stop: int | None = None) -> bool:
    """Whether data[start:stop] is empty or only zero bytes (padding some writers add)."""
    stop = len(data) if stop is None else stop
    return data.count(b"\x00", start, stop) == stop - start


# Inside entropy-coded data, 0xFF is followed by 0x00 (stuffing) or a restart marker
# 0xD0-0xD7; any other byte after 0xFF starts the next marker (after optional 0xFF fills).
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field
_SOI, _EOI, _SOS, _APP2 = 0xD8, 0xD9, 0xDA, 0xE2
_FILL = re.compile(rb"\xff*")  # fill bytes before a marker: skipped in C, not byte by byte


def _jpeg(data: bytes, start: int, stop: int, *, primary: bool) -> Layout:
    """SOI to EOI within data[start:stop]; for the primary image, also the images its MPF
    index places after it."""
    if data[start : start + 3] != b"\xff\xd8\xff":
        raise NotThisFormat("no start-of-image marker")
    pos, width, height, scans, mpf = start + 2, 0, 0, 0, None
    components, bits, segments = 3, 8, 0
    while True:
        first = pos == start + 2
        if pos >= stop:
            raise Broken("truncated before the end-of-image marker")
        if data[pos] != 0xFF:
            raise Broken(f"no marker where one must be, at byte {pos - start}")
        segments += 1
        if segments > MAX_SEGMENTS:
            raise TooCostly(f"more than {MAX_SEGMENTS} segments")
        pos = min(_FILL.match(data, pos).end(), stop)  # type: ignore[union-attr]
        if pos >= stop:
            raise Broken("truncated before the end-of-image marker")
        code = data[pos]
        pos += 1
        if code == _EOI:
            break
        if code in _STANDALONE:
            continue
        if code < 0xC0 or code == _SOI:  # 0x02-0xBF are reserved; 0x00 is never a marker
            if first:
                raise NotThisFormat("no valid marker after the start-of-image marker")
            raise Broken(f"an invalid marker 0xFF{code:02X} at byte {pos - 1 - start}")
        if pos + 2 > stop:
            raise Broken("truncated inside a segment header")
        length = int.from_bytes(data[pos : pos + 2], "big")
        segment_end = pos + length
        if length < 2:
            raise Broken(f"segment 0xFF{code:02X} has an impossible length")
        if segment_end > stop:
            raise Broken(f"truncated inside segment 0xFF{code:02X}")
        if code in _SOF and not width and length >= 8:
            bits = data[pos + 2]
            height = int.from_bytes(data[pos + 3 : pos + 5], "big")
            width = int.from_bytes(data[pos + 5 : pos + 7], "big")
            components = data[pos + 7]
        elif code == _APP2 and primary and mpf is None and data[pos + 2 : pos + 6] == b"MPF\0":
            mpf = (pos + 6, segment_end)
        pos = segment_end
        if code == _SOS:
            scans += 1
            if scans > MAX_SCANS:
                raise TooCostly(f"more than {MAX_SCANS} scans")
            found = _MARKER_IN_SCAN.search(data, pos, stop)
            if found is None:
                raise Broken("truncated inside the compressed image data")
            pos = found.start()
    if not width or not scans:
        raise Broken("no frame header or no image data")
    end = pos
    if mpf is not None and not only_zeros(data, end, stop):
        end = _mpf_end(data, end, stop, *mpf)
    return Layout(end, width, height, channels=components, bits=bits, scans=scans)


def _mpf_end(data: bytes, end: int, stop: int, base: int, mpf_stop: int) -> int:
    """The end of the images an MPF index places after the primary image (zero padding allowed
    between them), or `end` unchanged unless every one of them is a well-formed JPEG."""
    cursor = end
    for offset, size in sorted(_mpf_entries(data, base, mpf_stop)):
        first, last = base + offset, base + offset + size
        if first < cursor or last > stop or not only_zeros(data, cursor, first):
            return end
        try:
            image = _jpeg(data, first, last, primary=False)
        except (NotThisFormat, Broken):
            return end
        if not only_zeros(data, image.end, last):
            return end
        cursor = last
    return cursor


def _mpf_entries(data: bytes, base: int, stop: int) -> list[tuple[int, int]]:
    """(offset from the MP header, size) of each image after the first in an MPF index: a TIFF
    header and IFD whose tag 0xB002 (MPEntry) holds 16 bytes per image."""
    header = data[base:stop]
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(header[:4])
    if order is None:
        return []
    try:
        (ifd,) = struct.unpack_from(order + "I", header, 4)
        (count,) = struct.unpack_from(order + "H", header, ifd)
        for i in range(count):
            tag, _, size, value = struct.unpack_from(order + "HHII", header, ifd + 2 + 12 * i)
            if tag == 0xB002 and size % 16 == 0:
                # each entry: attribute, size, offset (u32), two dependent-image entries (u16)
                entries = [
                    struct.unpack_from(order + "III", header, value + 16 * n)
                    for n in range(size // 16)
                ]
                return [(offset, length) for _, length, offset in entries if offset and length]
    except struct.error:
        return []
    return []


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: grey, RGB, palette, LA, RGBA


def _png(data: bytes) -> Layout:
    if not data.startswith(_PNG_SIGNATURE):
        raise NotThisFormat("no PNG signature")
    view, pos, width, height = memoryview(data), len(_PNG_SIGNATURE), 0, 0
    depth, color_type, chunks, transparency = 8, 2, 0, False
    while True:
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise TooCostly(f"more than {MAX_CHUNKS} chunks")
        if pos + 8 > len(data):
            raise Broken("truncated before the IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        if pos == len(_PNG_SIGNATURE) and (kind != b"IHDR" or length != 13):
            raise NotThisFormat("no IHDR chunk after the signature")
        if not kind.isalpha() or length > 0x7FFFFFFF:
            raise Broken(f"a malformed chunk header at byte {pos}")
        chunk_end = pos + 12 + length
        if chunk_end > len(data):
            raise Broken("truncated inside a chunk")
        (crc,) = struct.unpack_from(">I", data, chunk_end - 4)
        if zlib.crc32(view[pos + 4 : chunk_end - 4]) != crc:
            raise Broken(f"bad CRC in a {kind.decode('ascii')} chunk")
        if kind == b"IHDR":
            width, height, depth, color_type = struct.unpack_from(">IIBB", data, pos + 8)
        transparency = transparency or kind == b"tRNS"
        pos = chunk_end
        if kind == b"IEND":
            return Layout(
                pos,
                width,
                height,
                channels=_PNG_CHANNELS.get(color_type, 4),
                bits=depth,
                palette=color_type == 3,
                alpha=transparency or color_type in (4, 6),
            )


def _webp(data: bytes) -> Layout:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise NotThisFormat("no RIFF/WEBP header")
    if len(data) >= 16 and data[12:16] not in (b"VP8 ", b"VP8L", b"VP8X"):
        raise NotThisFormat("no VP8, VP8L or VP8X chunk first")
    end = 8 + int.from_bytes(data[4:8], "little")
    if end > len(data):
        raise Broken("truncated: shorter than its RIFF length")
    pos, width, height, chunks = 12, 0, 0, 0
    # VP8X flags bit 4: alpha; VP8L always decodes with an alpha channel
    alpha = data[12:16] == b"VP8L" or (
        data[12:16] == b"VP8X" and len(data) > 20 and bool(data[20] & 0x10)
    )
    while pos < end:
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise TooCostly(f"more than {MAX_CHUNKS} chunks")
        if pos + 8 > end:
            raise Broken("a chunk header overruns the RIFF length")
        kind, size = struct.unpack_from("<4sI", data, pos)
        if pos == 12:
            width, height = _webp_size(kind, data[pos + 8 : min(pos + 8 + size, pos + 18)])
        chunk_end = pos + 8 + size + (size & 1)
        if chunk_end > end and not (size & 1 and chunk_end == end + 1):  # tolerate a last pad
            raise Broken("a chunk overruns the RIFF length")
        pos = chunk_end
    if pos == 12:
        raise Broken("no image chunk")
    # libwebp decodes into an RGBA canvas (Pillow's WebP plugin asks for RGBA or RGB)
    return Layout(end, width, height, channels=4, alpha=alpha)


def _webp_size(kind: bytes, head: bytes) -> tuple[int, int]:
    """Canvas size from the first 10 bytes of a VP8X, VP8L or VP8 chunk."""
    if kind == b"VP8X" and len(head) >= 10:  # 24-bit width-1, height-1 after 4 flag bytes
        return int.from_bytes(head[4:7], "little") + 1, int.from_bytes(head[7:10], "little") + 1
    if kind == b"VP8L" and len(head) >= 5 and head[0] == 0x2F:  # 14-bit width-1, height-1
        bits = int.from_bytes(head[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and len(head) >= 10 and head[3:6] == b"\x9d\x01\x2a":  # key frame
        return (
            int.from_bytes(head[6:8], "little") & 0x3FFF,
            int.from_bytes(head[8:10], "little") & 0x3FFF,
        )
    raise Broken(f"a malformed {kind.decode('ascii').strip()} header")


__all__ = [
    "JPEG",
    "MAX_CHUNKS",
    "MAX_SCANS",
    "MAX_SEGMENTS",
    "PNG",
    "WEBP",
    "Broken",
    "Layout",
    "NotThisFormat",
    "TooCostly",
    "only_zeros",
    "walk",
]
