"""Time the service over a real socket: rejections (the 30000x30000 PNG bomb, a truncated
JPEG, a text file) and parses with a tiny model, so the figures are the service's own overhead
(checks, decode, engine queue, render, HTTP), not the model's.

Usage: .venv/bin/python bench/service_http.py [--repeats 30] [--model-dir DIR]
Starts `gunicorn -c gunicorn.conf.py 'app:create_app()'` on 127.0.0.1 (a free port) with a
tiny seeded model (or --model-dir), one worker; prints median and p95 latency per case and the
worker's peak RSS (VmHWM) before and after the bomb requests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import images  # noqa: E402
from tests.support.servers import Gunicorn  # noqa: E402

PARSE = "/api/v1/parse"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(
    session: requests.Session, url: str, repeats: int, expected: int, **kwargs
) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        r = session.post(url + PARSE, timeout=120, **kwargs)
        times.append((time.perf_counter() - started) * 1000)
        if r.status_code != expected:
            raise SystemExit(f"expected {expected}, got {r.status_code}: {r.text[:200]}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args()
    model_dir = args.model_dir
    if model_dir is None:
        from tests.support.model_factory import write_tiny_model_dir

        model_dir = write_tiny_model_dir(tempfile.mkdtemp(prefix="m2fp-bench-"), seed=0)
    env = {
        "M2FP_MODEL_DIR": str(model_dir),
        "M2FP_RATE_LIMIT": "100000 per minute",
        "M2FP_BAN_AFTER": "100000",
    }
    server = Gunicorn(env)
    try:
        worker = server.workers()[0].pid
        session = requests.Session()
        png = {"headers": {"Content-Type": "image/png"}}
        jpeg = {"headers": {"Content-Type": "image/jpeg"}}
        photo = images.jpeg(1280, 960)
        big = images.padded_png(10 * 1024 * 1024)
        timed(session, server.url, 3, 200, data=photo, **jpeg)  # warm-up
        rss_before = peak_rss_mb(worker)
        cases = [
            (
                f"PNG bomb 30000x30000 ({len(images.png_bomb())} B) -> 413",
                413,
                {"data": images.png_bomb(), **png},
            ),
            ("truncated JPEG -> 422", 422, {"data": images.truncated_jpeg(), **jpeg}),
            ("text as PNG -> 415", 415, {"data": images.TEXT, **png}),
        ]
        rows = [
            (name, timed(session, server.url, args.repeats, status, **kw))
            for name, status, kw in cases
        ]
        rss_after = peak_rss_mb(worker)
        cases = [
            (
                "1280x960 JPEG -> JSON (tiny model)",
                200,
                {"data": photo, "params": {"output": "json"}, **jpeg},
            ),
            (
                "1280x960 JPEG -> overlay PNG (tiny model)",
                200,
                {"data": photo, "params": {"output": "overlay"}, **jpeg},
            ),
            (
                "10 MiB PNG, multipart -> JSON (tiny model)",
                200,
                {"files": {"image": ("a.png", big, "image/png")}},
            ),
        ]
        rows += [
            (name, timed(session, server.url, max(5, args.repeats // 3), status, **kw))
            for name, status, kw in cases
        ]
        print(f"{'case':46} {'median ms':>10} {'p95 ms':>8}")
        for name, times in rows:
            p95 = sorted(times)[max(0, round(0.95 * len(times)) - 1)]
            print(f"{name:46} {statistics.median(times):10.1f} {p95:8.1f}")
        print(
            f"worker peak RSS: {rss_before:.0f} MB before the rejections, "
            f"{rss_after:.0f} MB after {args.repeats} bombs"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
