"""Time the renderers the service runs on every request, and the PNG/WebP encoder settings.

Usage: .venv/bin/python bench/render_encode.py [--image PHOTO] [--width 1920] [--height 1080]
       [--repeats 5]
Without --image a photo-like picture is synthesised (smooth gradients + sensor-like noise). The
label map is synthetic (a few person-shaped blobs of parts). Prints the best time of each step
and the encoded sizes, for the settings m2fp.render uses and for the alternatives.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2fp import render  # noqa: E402
from m2fp.export import result_to_json  # noqa: E402
from m2fp.parser import ParsingResult, Person  # noqa: E402


def _photo(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [128 + 100 * np.sin(x / 97), 128 + 90 * np.cos(y / 71), 255 * (x + y) / (h + w)], -1
    )
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def _semantic(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    sem = np.zeros((h, w), np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    for _ in range(3):
        cx, cy, s = rng.uniform(0.2, 0.8) * w, rng.uniform(0.3, 0.6) * h, h / 6
        sem[(x - cx) ** 2 + (y - cy + 1.6 * s) ** 2 < (0.5 * s) ** 2] = 2  # hair
        sem[(x - cx) ** 2 + (y - cy + 1.4 * s) ** 2 < (0.35 * s) ** 2] = 13  # face
        body = (abs(x - cx) < 0.6 * s) & (y > cy - s) & (y < cy + 0.5 * s)
        sem[body] = 5  # upper clothes
        legs = (abs(x - cx) < 0.5 * s) & (y >= cy + 0.5 * s) & (y < cy + 2.2 * s)
        sem[legs] = 9  # pants
    return sem


def _result(sem: np.ndarray) -> ParsingResult:
    """The blobs as one person per connected column band (enough for timing the export)."""
    persons = []
    cols = np.flatnonzero((sem != 0).any(axis=0))
    bands = np.split(cols, np.flatnonzero(np.diff(cols) > 1) + 1) if cols.size else []
    for k, band in enumerate(bands, start=1):
        mask = np.zeros(sem.shape, bool)
        mask[:, band[0] : band[-1] + 1] = sem[:, band[0] : band[-1] + 1] != 0
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1)
        ids, counts = np.unique(sem[mask], return_counts=True)
        parts = {int(i): int(n) for i, n in zip(ids, counts, strict=True)}
        persons.append(Person(id=k, score=0.9, bbox=box, mask=mask, parts=parts))
    return ParsingResult(semantic=sem, instances=[], persons=persons)


def _best(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000, out


def _encoder(image: Image.Image, fmt: str, **options: object) -> Callable[[], int]:
    def run() -> int:
        buf = io.BytesIO()
        image.save(buf, fmt, **options)
        return len(buf.getvalue())

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.image:
        photo = Image.open(args.image).convert("RGB").resize((args.width, args.height))
        image = np.asarray(photo)
    else:
        image = _photo(args.height, args.width, rng)
    sem = _semantic(args.height, args.width, rng)
    r = args.repeats
    print(f"{args.width}x{args.height}, best of {r}")

    ms, ov = _best(lambda: render.overlay(image, sem, alpha=0.6), r)
    print(f"overlay (LUT)                      {ms:7.1f} ms")
    ms, _ = _best(lambda: render.class_stats(sem), r)
    print(f"class_stats                        {ms:7.1f} ms")
    ms, _ = _best(lambda: render.mask_rle(sem == 5), r)
    print(f"mask_rle (one class)               {ms:7.1f} ms")

    result = _result(sem)
    for fmt in ("rle", "png"):
        ms, _ = _best(lambda f=fmt: result_to_json(result, image, mask_format=f), r)
        print(f"result_to_json {len(result.persons)} persons, {fmt:<3}      {ms:7.1f} ms")
    ms, _ = _best(lambda: result_to_json(result, image, include_overlay=True), r)
    print(f"result_to_json + overlay PNG        {ms:7.1f} ms")

    for name, encode in (
        ("overlay PNG, m2fp.png (used)", lambda: render.encode_image(ov, "png")),
        ("label map PNG, m2fp.png (used)", lambda: render.label_map_png(sem)),
        ("label map palette PNG, m2fp.png (used)", lambda: render.label_map_png(sem, palette=True)),
    ):
        ms, data = _best(encode, r)
        print(f"{name:<36} {ms:7.1f} ms  {len(data) / 1024:8.1f} KiB")

    overlay_image = Image.fromarray(ov)
    label_image = Image.fromarray(sem)
    z_rle = {"compress_level": 1, "compress_type": zlib.Z_RLE}
    cases = [
        ("overlay PNG, Pillow level 1 Z_RLE", overlay_image, "PNG", z_rle, r),
        ("overlay PNG, Pillow level 1", overlay_image, "PNG", {"compress_level": 1}, r),
        ("overlay PNG level 6 (Pillow default)", overlay_image, "PNG", {"compress_level": 6}, r),
        ("overlay WebP lossless m0 q0 (used)", overlay_image, "WEBP", render.WEBP_OPTIONS, r),
        ("overlay WebP lossless default", overlay_image, "WEBP", {"lossless": True}, 1),
        ("label map PNG, Pillow level 1 Z_RLE", label_image, "PNG", z_rle, r),
        ("label map PNG level 6", label_image, "PNG", {"compress_level": 6}, r),
        ("label map PNG level 9", label_image, "PNG", {"compress_level": 9}, r),
        ("label map PNG level 1 Z_FILTERED", label_image, "PNG",
         {"compress_level": 1, "compress_type": zlib.Z_FILTERED}, r),
    ]  # fmt: skip
    for name, im, fmt, options, repeats in cases:
        ms, size = _best(_encoder(im, fmt, **options), repeats)
        print(f"{name:<36} {ms:7.1f} ms  {size / 1024:8.1f} KiB")


if __name__ == "__main__":
    main()
