"""Upload validation and in-memory decoding: bytes in, a bare RGB pixel array out.

A pure core (no Flask, no torch, no OpenCV): the service calls `load_upload()` with the request
body and the client's claims, and maps the exceptions of `security.errors` to HTTP answers.

What an upload has to pass, in this order (cheapest first, nothing decoded before the last step):

1. **Bytes**: at most `policy.max_bytes` (413). An empty body is a malformed request (400).
2. **Type**: libmagic, on the first `SNIFF_BYTES`, must name exactly JPEG, PNG or WebP (415); a
   declared Content-Type (`image/jpeg`, `image/jpg`, `image/png`, `image/webp`) and a file-name
   extension (`.jpg`, `.jpeg`, `.jfif`, `.png`, `.webp`), when given, must agree with it (415).
   A missing Content-Type, `application/octet-stream`, or a name without an extension counts as
   "not declared". Error messages say what was found versus claimed; they never repeat the file
   name (only a recognised extension).
3. **Structure**: the container is walked before any decoder sees it: JPEG markers and segments
   through the entropy-coded scans to EOI, PNG chunks (with their CRCs) to IEND, the WebP RIFF
   chunks to the RIFF length. A file that only starts like the format is refused (415); a broken
   or truncated structure is 422. The walk knows where the image ends: **bytes after it** (the
   video of a Google or Samsung "motion photo", Samsung's `SEFH` trailer, a stray byte after a
   PNG's IEND, an appended archive or script) **never reach a decoder**: only `data[:end]` is
   decoded, and `DecodedImage.trailer_bytes` says how many bytes were dropped. The service
   stores and serves no upload and re-encodes every output, so what follows the image cannot
   be served back as anything. With `policy.allow_trailing_data=False` (the strict policy)
   they are refused (415) instead, except zero padding: the polyglot defence (JPEG + ZIP,
   PNG + PHP pass libmagic and Pillow) of services that keep uploads. Either way a JPEG whose
   own MPF index (CIPA DC-007: MPO stereo pairs, the gain map of Ultra HDR photos) lists the
   images that follow it, each itself a well-formed JPEG, ends after the last of them.
   Counts that set the decoder's CPU time are bounded in the same walk: at most 64 JPEG scans,
   1,024 JPEG segments, 20,000 PNG or WebP chunks (422, see `security.image_containers`).
4. **Pixels**: the width and height read from the header (and again from Pillow's lazy
   `Image.open`, restricted to the sniffed format) must give at most `policy.max_pixels` (413);
   a few-KB PNG declaring 30000x30000 is refused in microseconds, before any allocation. A
   multi-scan JPEG's width x height x scans must stay within `policy.max_pixels` x
   `SCANS_AT_THE_CAP` (422): libjpeg walks every block once per scan, even an empty one.
5. **Memory** (`load_upload` with a `budget` only): the decode's peak memory, estimated from the
   header (`security.decode_budget.estimate_bytes`), must fit the whole budget (413); the
   decode then waits for one of the budget's slots and that much of its memory (503 with
   Retry-After after `wait_s`).
6. **Decode** (422 when it fails, e.g. "image file is truncated", a broken Huffman table): the
   first frame only (animated WebP, APNG, MPO); large JPEGs are decoded at a reduced DCT scale
   (`draft`) when that still leaves at least `policy.max_side`; palette, grey, 16-bit, CMYK and
   alpha modes normalised to RGB (transparency composited on white) with as few full-size
   copies as the mode allows; downscaled with Lanczos so the longest side is at most
   `policy.max_side`; EXIF orientation applied to that working copy.

The result, `DecodedImage`, holds only pixels and sizes: EXIF (GPS included), ICC, XMP and text
chunks are dropped with the container.
"""

from __future__ import annotations

import io
import math
import re
import struct
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import magic
import numpy as np
from PIL import Image

from security import decode_budget, image_containers
from security.decode_budget import DecodeBudget
from security.errors import (
    BadRequest,
    PayloadTooLarge,
    UnprocessableImage,
    UnsupportedMediaType,
)
from security.image_containers import JPEG, PNG, WEBP

if TYPE_CHECKING:
    from settings import Settings

ALLOWED_MIMES = (JPEG, PNG, WEBP)
SNIFF_BYTES = 4096  # python-magic recommends at least the first 2048 bytes
_NAMES = {JPEG: "JPEG", PNG: "PNG", WEBP: "WebP"}
_PILLOW_FORMATS = {JPEG: "JPEG", PNG: "PNG", WEBP: "WEBP"}
_DECLARED = {"image/jpeg": JPEG, "image/jpg": JPEG, "image/png": PNG, "image/webp": WEBP}
_UNDECLARED = {"", "application/octet-stream", "binary/octet-stream"}
_EXTENSIONS = {"jpg": JPEG, "jpeg": JPEG, "jfif": JPEG, "png": PNG, "webp": WEBP}
_PLAIN_DETAIL = re.compile(r"[A-Za-z0-9 ,;:()'_-]{1,100}")
# Scans a JPEG at the pixel cap may have: libjpeg's progressive script writes 10, mozjpeg 9 to
# 13. Smaller images may have up to image_containers.MAX_SCANS.
SCANS_AT_THE_CAP = 16
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")

# Pillow's own decompression-bomb guard is a backstop behind the explicit checks below: it
# only warns up to 2x MAX_IMAGE_PIXELS, so make the warning an error and lower the cap to the
# default policy (raised, never lowered, for a policy that allows more: see _pillow_cap).
warnings.simplefilter("error", Image.DecompressionBombWarning)
# 24 MP: the largest image whose worst-case decode (a WebP with alpha, ~21 bytes a pixel,
# security.decode_budget) fits half the default decode budget of a 4 GiB machine (a quarter of
# it), so two such decodes run at once; 6000x4000, 24 MP cameras, 12 MP phone photos.
DEFAULT_MAX_PIXELS = 24_000_000
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS
_PILLOW_CAP_LOCK = threading.Lock()


@dataclass(frozen=True)
class UploadPolicy:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = 1920  # working copy: longest side at most this (downscale only)
    # for the service's DecodeBudget (security.decode_budget.budget_for); None: automatic
    decode_slots: int | None = None
    decode_memory: int | None = None  # bytes
    # Bytes after the image: dropped undecoded (True) or refused with 415 (False; zero padding
    # is accepted either way). docs/uploads.md, "Data after the image".
    allow_trailing_data: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.allow_trailing_data, bool):
            raise ValueError(
                "UploadPolicy.allow_trailing_data must be True or False, not "
                f"{self.allow_trailing_data!r}"
            )
        for name in ("max_bytes", "max_pixels", "max_side", "decode_slots", "decode_memory"):
            value = getattr(self, name)
            if value is None and name.startswith("decode_"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UploadPolicy.{name} must be a positive integer, not {value!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadPolicy:
        """The policy of `M2FP_MAX_UPLOAD_MB`, `M2FP_MAX_PIXELS`, `M2FP_MAX_SIDE`,
        `M2FP_DECODE_SLOTS`, `M2FP_DECODE_MEMORY_MB` and `M2FP_ALLOW_TRAILING_DATA`."""
        memory_mb = settings.decode_memory_mb
        return cls(
            max_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_pixels,
            max_side=settings.max_side,
            decode_slots=settings.decode_slots,
            decode_memory=int(memory_mb * 1024 * 1024) if memory_mb else None,
            allow_trailing_data=settings.allow_trailing_data,
        )


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # (H, W, 3) uint8 RGB, EXIF orientation applied, working copy
    mime: str  # image/jpeg | image/png | image/webp
    original_size: tuple[int, int]  # (width, height) after EXIF orientation, before downscale
    bytes_in: int  # the whole upload
    trailer_bytes: int = 0  # of those, after the end of the image: dropped, never decoded


# --------------------------------------------------------------------------------------------
# Public API


def sniff_mime(data: bytes) -> str:
    """The MIME type libmagic names for the first `SNIFF_BYTES` of `data`."""
    return magic.from_buffer(bytes(data[:SNIFF_BYTES]), mime=True)


def check_upload(
    data: bytes | bytearray | memoryview,
    *,
    declared_type: str | None = None,
    filename: str | None = None,
    policy: UploadPolicy | None = None,
) -> str:
    """Check bytes, type, container structure and declared pixel count; decode nothing.

    Returns the MIME type (one of `ALLOWED_MIMES`). Raises `PayloadTooLarge` (413: bytes or
    pixels), `BadRequest` (400: empty), `UnsupportedMediaType` (415: not JPEG/PNG/WebP, claims
    that disagree; data after the image under the strict policy) or `UnprocessableImage` (422:
    broken structure).
    """
    policy = policy or UploadPolicy()
    return _check(_bytes_within_cap(data, policy), declared_type, filename, policy)[0]


def decode_image(
    data: bytes | bytearray | memoryview, *, mime: str, policy: UploadPolicy | None = None
) -> DecodedImage:
    """Decode an upload of type `mime` into the RGB working copy (see the module docstring).

    Meant for bytes that passed `check_upload`; it walks the container again itself, so nothing
    unchecked reaches Pillow even when called alone. Raises `PayloadTooLarge` (413: bytes or
    pixels), `BadRequest` (400: empty), `UnprocessableImage` (422) or `UnsupportedMediaType`
    (415: not this format; data after the image under the strict policy).
    """
    if mime not in ALLOWED_MIMES:
        raise ValueError(f"mime must be one of {', '.join(ALLOWED_MIMES)}, not {mime!r}")
    policy = policy or UploadPolicy()
    data = _bytes_within_cap(data, policy)
    layout = _inspect(data, mime, policy)
    _check_layout(layout, policy)
    return _decode(data, layout.end, mime, policy)


def load_upload(
    data: bytes | bytearray | memoryview,
    *,
    declared_type: str | None = None,
    filename: str | None = None,
    policy: UploadPolicy | None = None,
    budget: DecodeBudget | None = None,
    wait_s: float = 10.0,
) -> DecodedImage:
    """`check_upload` then decode: the one call the service makes for each upload.

    With a `budget`, the decode holds one of its slots and the memory `decode_budget`
    estimates for it: PayloadTooLarge (413) when the estimate exceeds the whole budget,
    Overloaded (503, Retry-After) when none came free within `wait_s` seconds.
    """
    policy = policy or UploadPolicy()
    data = _bytes_within_cap(data, policy)
    mime, layout = _check(data, declared_type, filename, policy)
    if budget is None:
        return _decode(data, layout.end, mime, policy)
    estimate = decode_budget.estimate_bytes(layout, mime, max_side=policy.max_side)
    with budget.reserve(estimate, timeout=wait_s):
        return _decode(data, layout.end, mime, policy)


# --------------------------------------------------------------------------------------------
# Checks before decoding


def _check(
    data: bytes, declared_type: str | None, filename: str | None, policy: UploadPolicy
) -> tuple[str, image_containers.Layout]:
    sniffed = sniff_mime(data)
    if sniffed not in ALLOWED_MIMES:
        raise UnsupportedMediaType(
            f"The upload's content is {sniffed}; only JPEG, PNG and WebP images are accepted."
        )
    _check_declared_type(sniffed, declared_type)
    _check_extension(sniffed, filename)
    layout = _inspect(data, sniffed, policy)
    _check_layout(layout, policy)
    return sniffed, layout


def _bytes_within_cap(data: bytes | bytearray | memoryview, policy: UploadPolicy) -> bytes:
    """`data` as bytes (a bytearray or memoryview is copied), after the byte cap and the
    empty-body check."""
    size = memoryview(data).nbytes
    if size > policy.max_bytes:
        raise PayloadTooLarge(f"The upload is {size} bytes; the limit is {policy.max_bytes} bytes.")
    if not size:
        raise BadRequest("The upload is empty.")
    return data if isinstance(data, bytes) else bytes(data)


def _check_declared_type(sniffed: str, declared_type: str | None) -> None:
    declared = (declared_type or "").split(";", 1)[0].strip().lower()
    if declared in _UNDECLARED or _DECLARED.get(declared) == sniffed:
        return
    shown = declared if _MEDIA_TYPE.fullmatch(declared) else "an invalid media type"
    raise UnsupportedMediaType(
        f"The upload's content is {sniffed} but its Content-Type says {shown}."
    )


def _check_extension(sniffed: str, filename: str | None) -> None:
    if not filename:
        return
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if "." not in base.strip("."):
        return  # no extension, e.g. "blob" from a clipboard paste: nothing claimed
    extension = base.rsplit(".", 1)[-1].strip().lower()
    claimed = _EXTENSIONS.get(extension)
    if claimed == sniffed:
        return
    said = (
        f"its file name extension says {_NAMES[claimed]}"
        if claimed
        else "its file name extension is not .jpg, .jpeg, .jfif, .png or .webp"
    )
    raise UnsupportedMediaType(f"The upload's content is {sniffed} but {said}.")


def _check_pixels(width: int, height: int, policy: UploadPolicy) -> None:
    if width * height > policy.max_pixels:
        raise PayloadTooLarge(
            f"The image is {width}x{height} pixels; the limit is {policy.max_pixels} pixels."
        )


def _check_layout(layout: image_containers.Layout, policy: UploadPolicy) -> None:
    """The pixel cap (413), then the scan budget (422)."""
    _check_pixels(layout.width, layout.height, policy)
    budget = policy.max_pixels * SCANS_AT_THE_CAP
    if layout.width * layout.height * layout.scans > budget:
        raise UnprocessableImage(
            f"The image has {layout.scans} scans of {layout.width}x{layout.height} pixels; "
            f"decoding it would cost too much (at most {budget} pixels x scans)."
        )


def _inspect(data: bytes, mime: str, policy: UploadPolicy) -> image_containers.Layout:
    """Walk the container of `data` and return its layout; under the strict policy, refuse
    anything but zeros after the image's end."""
    name = _NAMES[mime]
    try:
        layout = image_containers.walk(data, mime)
    except image_containers.NotThisFormat as exc:
        raise UnsupportedMediaType(
            f"The upload starts like a {name} image but is not one: {exc}."
        ) from None
    except image_containers.Broken as exc:
        raise UnprocessableImage(f"The {name} image is damaged: {exc}.") from None
    except image_containers.TooCostly as exc:
        raise UnprocessableImage(
            f"The {name} image would cost too much to decode: {exc}."
        ) from None
    if not policy.allow_trailing_data and not image_containers.only_zeros(data, layout.end):
        raise UnsupportedMediaType(
            f"The {name} image is followed by {len(data) - layout.end} more bytes (such as an "
            "appended archive, script or video); files with data after the image are refused."
        )
    if layout.width < 1 or layout.height < 1:
        raise UnprocessableImage(f"The {name} image declares no size.")
    return layout


# --------------------------------------------------------------------------------------------
# Decoding


def _decode(data: bytes, end: int, mime: str, policy: UploadPolicy) -> DecodedImage:
    """Decode the image that ends at `end`; the bytes after it reach no decoder."""
    name = _NAMES[mime]
    _pillow_cap(policy.max_pixels)
    image = data if end >= len(data) else data[:end]
    try:
        with Image.open(io.BytesIO(image), formats=[_PILLOW_FORMATS[mime]]) as im:
            width, height = im.size
            _check_pixels(width, height, policy)
            if mime == JPEG:
                _draft(im, policy.max_side)
            im.load()
            orientation = im.getexif().get(0x0112, 1)
            # reduced to the working copy before turning: a quarter turn of the full image
            # would be one more full-size copy
            working = _working_copy(im, policy.max_side)
        if orientation in (5, 6, 7, 8):  # turned a quarter
            width, height = height, width
        if orientation in _TRANSPOSE:
            working = working.transpose(_TRANSPOSE[orientation])
        # a writeable array owned by the caller
        pixels = np.array(working, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(f"The image is over {policy.max_pixels} pixels.") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        # Pillow's own words when they are plain ("image file is truncated"), never a repr
        detail = str(exc) if _PLAIN_DETAIL.fullmatch(str(exc)) else "damaged or truncated"
        raise UnprocessableImage(f"The {name} image could not be decoded: {detail}.") from exc
    return DecodedImage(
        pixels=pixels,
        mime=mime,
        original_size=(width, height),
        bytes_in=len(data),
        trailer_bytes=len(data) - len(image),
    )


# EXIF orientation → the transposition that makes the stored image upright (as
# ImageOps.exif_transpose does)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _pillow_cap(max_pixels: int) -> None:
    """Keep Pillow's bomb check at or above the policy, so that the explicit 413 answers."""
    with _PILLOW_CAP_LOCK:
        if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = max_pixels


def _draft(im: Image.Image, max_side: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT scaling) when that still leaves at
    least `max_side` on the longest side: a 12 MP photo decodes in about half the time, into
    a quarter of the memory."""
    width, height = im.size
    scale = max_side / max(width, height)
    if scale <= 0.5:
        im.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))


def _working_copy(im: Image.Image, max_side: int) -> Image.Image:
    """Any decoded mode as 8-bit RGB at most `max_side` on the long side, with as few
    full-size copies as the mode allows (`security.decode_budget.estimate_bytes` counts them):
    one-band images are reduced before they become RGB; transparency is composited on white
    at full size, in one RGB copy."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey PNG: scale, do not clip
        return _downscale(_high_bytes(im), max_side).convert("RGB")
    if im.has_transparency_data:
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba)
        del rgba
        return _downscale(rgb, max_side)
    if im.mode in ("L", "1"):
        return _downscale(im if im.mode == "L" else im.convert("L"), max_side).convert("RGB")
    return _downscale(im if im.mode == "RGB" else im.convert("RGB"), max_side)


def _high_bytes(im: Image.Image) -> Image.Image:
    """The top 8 bits of a 16-bit grey image, as "L" (one byte a pixel, no uint32 copies)."""
    samples = np.asarray(im)
    if samples.dtype.itemsize == 4:  # mode "I": 32-bit, 16-bit values
        high = (np.clip(samples, 0, 65535) >> 8).astype(np.uint8)
    else:
        little = samples.dtype.byteorder == "<" or (
            samples.dtype.byteorder == "=" and sys.byteorder == "little"
        )
        high = np.ascontiguousarray(samples.view(np.uint8)[:, 1 if little else 0 :: 2])
    del samples
    return Image.fromarray(high)


def _downscale(im: Image.Image, max_side: int) -> Image.Image:
    width, height = im.size
    if max(width, height) <= max_side:
        return im
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


__all__ = [
    "ALLOWED_MIMES",
    "DecodedImage",
    "UploadPolicy",
    "check_upload",
    "decode_image",
    "load_upload",
    "sniff_mime",
]
