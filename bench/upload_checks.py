"""Time the upload checks and decoding of security.uploads on images made in memory.

Usage: .venv/bin/python bench/upload_checks.py [--repeats 5]
Prints, for each case, the best and median wall time of `check_upload` (no decoding) and
`load_upload` (check + decode + working copy), and the process's peak RSS (ru_maxrss) after the
case (before -> after its calls). The header bombs run first: they must be refused in well
under 100 ms without the peak RSS moving.
"""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import sys
import time
import unittest.mock
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from security import uploads  # noqa: E402
from security.errors import ServiceError  # noqa: E402
from security.uploads import UploadPolicy, check_upload, load_upload  # noqa: E402
from tests.support import images as samples  # noqa: E402


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _photo(width: int, height: int) -> Image.Image:
    """Smooth gradients plus mild noise: compresses like a photo, not like flat colour."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    pixels = np.stack(
        [128 + 100 * np.sin(x / 97), 128 + 100 * np.cos(y / 131), (x + y) % 256], axis=-1
    )
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _time(call: Callable[[], object], repeats: int) -> tuple[float, float, str]:
    """(best ms, median ms, outcome) of `repeats` calls."""
    times, outcome = [], "ok"
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            call()
        except ServiceError as exc:
            outcome = f"{exc.status} {exc.code}"
        times.append((time.perf_counter() - start) * 1000)
    return min(times), statistics.median(times), outcome


def _cases() -> dict[str, Callable[[], tuple[bytes, UploadPolicy]]]:
    """Inputs, built lazily in this order so the bombs run while the peak RSS is still low."""
    default = UploadPolicy()
    photo = functools.cache(lambda: samples.encode(_photo(4000, 3000), "JPEG", quality=90))
    return {
        "PNG bomb 30000x30000": lambda: (samples.png_bomb(), default),
        "JPEG bomb 60000x60000": lambda: (samples.jpeg_bomb(), default),
        "WebP bomb 16384x16384 (VP8L)": lambda: (samples.webp_lossless_bomb(), default),
        "WebP bomb 100000x100000 (VP8X)": lambda: (samples.webp_canvas_bomb(), default),
        "JPEG+ZIP polyglot (12 MP), strict": lambda: (
            photo() + samples.zip_archive(),
            UploadPolicy(allow_trailing_data=False),
        ),
        "truncated JPEG (12 MP, half)": lambda: (photo()[: len(photo()) // 2], default),
        "JPEG 12 MP -> 1920 (DCT scaling)": lambda: (photo(), default),
        "JPEG 12 MP -> 1920, no DCT scaling": lambda: (photo(), default),
        "JPEG 12 MP, full size": lambda: (photo(), UploadPolicy(max_side=4000)),
        "PNG 1920x1080": lambda: (samples.encode(_photo(1920, 1080), "PNG"), default),
        "WebP 1920x1080 (lossy)": lambda: (
            samples.encode(_photo(1920, 1080), "WEBP", quality=85),
            default,
        ),
        "PNG 4000x3000 -> 1920": lambda: (
            samples.encode(_photo(4000, 3000), "PNG", compress_level=1),
            UploadPolicy(max_bytes=64 * 1024 * 1024),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(
        f"peak RSS after imports: {_peak_rss_mb():.0f} MB; times: best / median of {args.repeats}"
    )
    print(f"{'case':34} {'bytes':>10} {'check ms':>16} {'load ms':>18}  {'outcome':26} peak RSS MB")
    for name, make in _cases().items():
        data, policy = make()
        before = _peak_rss_mb()
        # for comparison only: the same decode without libjpeg's DCT scaling
        draft = (lambda im, side: None) if "no DCT" in name else uploads._draft
        with unittest.mock.patch.object(uploads, "_draft", draft):
            check = _time(lambda d=data, p=policy: check_upload(d, policy=p), args.repeats)
            load = _time(lambda d=data, p=policy: load_upload(d, policy=p), args.repeats)
        print(
            f"{name:34} {len(data):>10,} {check[0]:>7.3f} /{check[1]:>7.3f} "
            f"{load[0]:>8.2f} /{load[1]:>8.2f}  {load[2]:26} {before:4.0f} -> {_peak_rss_mb():.0f}"
        )


if __name__ == "__main__":
    main()
