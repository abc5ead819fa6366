"""Decode memory: what a decode will need, estimated from the header, and the share of the
process's memory that all decodes in flight may use together.

A 77 KB 16-bit greyscale PNG of 8000x5000 decodes into 80 MB and its working copies took
~0.4 GB more; six at once grew a worker by 2.3 GB. The pixel cap alone bounds one request, not
the sum. Two pure pieces (no Flask):

- `estimate_bytes(layout, mime, max_side=...)`: the peak memory of `security.uploads`' decode
  of an image with this container layout, from width x height x samples x bytes per sample of
  what the decoder produces, plus the working copies the conversion to RGB makes, plus the
  coefficient buffer of a multi-scan JPEG. An upper bound (checked against measured peaks in
  tests/security/test_decode_budget.py), never below what the decode allocates.
- `DecodeBudget(slots=..., memory_bytes=...)`: at most `slots` decodes at once and at most
  `memory_bytes` of estimates in flight, granted first come first served; `reserve()` waits
  up to a deadline and then answers 503 `overloaded` with Retry-After. An estimate larger than
  the whole budget can never be served: 413.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from security.errors import Overloaded, PayloadTooLarge
from security.image_containers import JPEG, PNG, WEBP, Layout

MIB = 1024 * 1024
# Pillow stores every multi-band mode (RGB included) in 4 bytes per pixel, one-band 8-bit modes
# in 1, "I;16" in 2.
_MULTIBAND = 4
# What the decoders hold besides the image (libjpeg's row and Huffman buffers, zlib's window,
# Pillow's read buffer) and the allocator's rounding.
DECODER_BUFFERS = 4 * MIB
# The default share of the memory limit that decodes in flight may hold: the model, the
# engine's batches and the responses need the rest. Never less than MIN_DEFAULT_MEMORY: a 6 MP
# RGB photo needs about 70 MiB.
DEFAULT_MEMORY_FRACTION = 0.25
MIN_DEFAULT_MEMORY = 64 * MIB
# Seconds a client is asked to wait when no decode slot came free in time.
RETRY_AFTER_S = 2


def decoded_size(layout: Layout, mime: str, *, max_side: int) -> tuple[int, int]:
    """Width and height the decoder produces: a JPEG is decoded at 1/2, 1/4 or 1/8 scale
    (DCT scaling) when that still leaves `max_side` on the long side (`uploads._draft`)."""
    width, height = layout.width, layout.height
    if mime == JPEG:
        for denominator in (8, 4, 2):
            if max(width, height) / denominator >= max_side:
                return -(-width // denominator), -(-height // denominator)
    return width, height


def estimate_bytes(layout: Layout, mime: str, *, max_side: int) -> int:
    """Peak bytes a decode of this image allocates, beyond the upload itself (see the module
    docstring): the decoder's image, the full-size copies the conversion to RGB makes, a
    multi-scan JPEG's coefficients, the Lanczos pass to `max_side`, the working copy."""
    width, height = decoded_size(layout, mime, max_side=max_side)
    if mime == JPEG:
        per_pixel = _jpeg_bytes_per_pixel(layout)
        # a progressive (or multi-scan) JPEG keeps every DCT coefficient, 2 bytes a sample, of
        # the full-size image, whatever the DCT scale
        fixed = layout.width * layout.height * layout.channels * 2 if layout.scans > 1 else 0
    elif mime == PNG:
        per_pixel, fixed = _png_bytes_per_pixel(layout), 0
    elif mime == WEBP:
        # libwebp's animation decoder keeps the current and the previous canvas (RGBA) and
        # hands Pillow a copy as bytes, which Pillow unpacks into its image; then the RGB copy
        per_pixel, fixed = 4 * 4 + (_MULTIBAND if layout.alpha else 0), 0
    else:
        raise ValueError(f"no estimate for {mime!r}")
    # Lanczos resizes one axis, then the other: the first pass is the reduced width by the full
    # height (4 bytes a pixel whatever the mode); then the RGB working copy and its array
    scale = min(1.0, max_side / max(width, height))
    out_width, out_height = math.ceil(width * scale), math.ceil(height * scale)
    first_pass = out_width * height * _MULTIBAND if scale < 1 else 0
    working = out_width * out_height * (_MULTIBAND + 3)
    return width * height * per_pixel + fixed + first_pass + working + DECODER_BUFFERS


def _jpeg_bytes_per_pixel(layout: Layout) -> int:
    if layout.channels == 1:
        return 1  # "L", reduced before it becomes RGB
    if layout.channels == 4:
        return 2 * _MULTIBAND  # CMYK, then its RGB conversion
    return _MULTIBAND  # RGB straight from the decoder


# Pillow's mode for a PNG of (colour type, bit depth): the bytes a pixel of it takes and of the
# full-size copies `uploads._working_copy` makes of it, without and with transparency.
def _png_bytes_per_pixel(layout: Layout) -> int:
    if layout.channels == 1 and not layout.palette and layout.bits == 16:
        return 2 + 2 + 1  # "I;16", its array, the high bytes as "L" (transparency ignored)
    if layout.palette or layout.channels == 1:
        decoded = 1  # "P", "L" or "1"
        if layout.alpha:
            return decoded + 2 * _MULTIBAND  # RGBA, then RGB composited on white
        if layout.palette:
            return decoded + _MULTIBAND  # RGB
        return decoded + 1  # "1" becomes "L" before it is reduced; "L" is reduced as is
    # RGB, LA and RGBA (16-bit ones reduced to 8 bits by Pillow): 4 bytes a pixel; anything
    # but RGBA converted to RGBA for transparency; the RGB composite
    if layout.channels == 4:
        return _MULTIBAND + _MULTIBAND
    if layout.alpha:
        return _MULTIBAND + 2 * _MULTIBAND
    return _MULTIBAND


def default_slots() -> int:
    """Decodes that may run at once: the CPUs this process may use (Pillow releases the GIL
    while it decodes, so more than that only adds memory, not speed)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class DecodeBudget:
    """At most `slots` decodes at once holding at most `memory_bytes` of estimates, granted in
    arrival order (a large request is not starved by a stream of small ones)."""

    def __init__(self, *, slots: int, memory_bytes: int) -> None:
        if slots < 1 or memory_bytes < 1:
            raise ValueError("slots and memory_bytes must be positive")
        self.slots = slots
        self.memory_bytes = memory_bytes
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._running = 0
        self._reserved = 0

    @property
    def in_use(self) -> tuple[int, int]:
        """(decodes running, bytes reserved)."""
        with self._cond:
            return self._running, self._reserved

    def check(self, nbytes: int) -> None:
        """413 for an estimate that can never fit the budget, whatever else is running."""
        if nbytes > self.memory_bytes:
            raise PayloadTooLarge(
                f"Decoding this image would need about {nbytes // MIB} MiB; the limit is "
                f"{self.memory_bytes // MIB} MiB. Send a smaller image or an 8-bit one."
            )

    @contextmanager
    def reserve(self, nbytes: int, *, timeout: float) -> Iterator[None]:
        """Hold a slot and `nbytes` of the budget for the `with` body.

        Raises PayloadTooLarge (413) when `nbytes` exceeds the whole budget, Overloaded (503,
        Retry-After) when no slot and memory came free within `timeout` seconds.
        """
        self.check(nbytes)
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            granted = self._cond.wait_for(lambda: self._fits(ticket, nbytes), timeout)
            self._queue.remove(ticket)
            if granted:
                self._running += 1
                self._reserved += nbytes
            self._cond.notify_all()  # the next in line may now be first
        if not granted:
            raise Overloaded(
                "The server is decoding other images; try again shortly.",
                retry_after=RETRY_AFTER_S,
            )
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._reserved -= nbytes
                self._cond.notify_all()

    def _fits(self, ticket: object, nbytes: int) -> bool:
        return (
            self._queue[0] is ticket
            and self._running < self.slots
            and self._reserved + nbytes <= self.memory_bytes
        )


def budget_for(*, slots: int | None, memory_bytes: int | None, memory_limit: int) -> DecodeBudget:
    """The budget of the settings: `slots` or `default_slots()`, `memory_bytes` or
    `DEFAULT_MEMORY_FRACTION` of `memory_limit` (the limit memory shedding watches), at least
    `MIN_DEFAULT_MEMORY`."""
    return DecodeBudget(
        slots=slots or default_slots(),
        memory_bytes=memory_bytes
        or max(MIN_DEFAULT_MEMORY, int(memory_limit * DEFAULT_MEMORY_FRACTION)),
    )


__all__ = [
    "DEFAULT_MEMORY_FRACTION",
    "MIN_DEFAULT_MEMORY",
    "RETRY_AFTER_S",
    "DecodeBudget",
    "budget_for",
    "decoded_size",
    "default_slots",
    "estimate_bytes",
]
