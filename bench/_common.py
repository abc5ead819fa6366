"""Shared pieces of the benchmarks: worker processes driven over a pipe, memory figures,
statistics, seeded inputs. Needs only the standard library, numpy and torch, so it also runs
inside .venv-modelscope (bench/compare_modelscope.py's ModelScope worker)."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
_TAG = "@@bench "  # prefix of protocol lines; anything else a worker prints is passed through


# ---------------------------------------------------------------------------------- memory


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process, so the next `window_peak_mb`
    covers only what follows. Linux only; False where it is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def window_peak_mb() -> float | None:
    """VmHWM (peak RSS since the last `reset_peak_rss`), or None where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ------------------------------------------------------------------------------ statistics


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """median and p95 (nearest rank) of timings, in seconds."""
    ordered = sorted(seconds)
    rank = max(0, min(len(ordered) - 1, int(np.ceil(0.95 * len(ordered))) - 1))
    return {
        "median_s": statistics.median(ordered),
        "p95_s": ordered[rank],
        "min_s": ordered[0],
        "runs": len(ordered),
    }


def machine_info() -> dict[str, Any]:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg": load,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------------------- inputs


def random_batch(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (B, 3, H, W) uniform noise: the forward benchmark's input."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, 3, height, width), dtype=np.uint8)


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (H, W, 3) RGB with smooth shading, a few solid shapes and sensor-like noise:
    resizes and compresses like a photograph, unlike uniform noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(30, 225, size=(6, 9, 3)).astype(np.uint8)
    shading = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
    image = np.asarray(shading, dtype=np.float32).copy()
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(6):  # ellipses standing in for people and objects
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.1, 0.9) * width
        ry, rx = rng.uniform(0.15, 0.4) * height, rng.uniform(0.05, 0.15) * width
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image[inside] = rng.uniform(0, 255, size=3)
    image += rng.normal(0, 4, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------- workers


class Worker:
    """A benchmark worker in its own process (its own interpreter, threads and peak RSS),
    answering one JSON request at a time. Timings of several workers interleave cleanly:
    while one runs, the others wait on their pipes."""

    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None):
        self.name = name
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=REPO,
        )
        self.hello = self._read()

    def request(self, **message: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(_TAG):
                reply = json.loads(line[len(_TAG) :])
                if "error" in reply:
                    raise RuntimeError(f"worker {self.name}: {reply['error']}")
                return reply
            sys.stdout.write(f"[{self.name}] {line}")
        code = self.proc.wait()
        raise RuntimeError(f"worker {self.name} exited with status {code}")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def serve(hello: dict[str, Any], handler: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Worker side: announce `hello`, then answer each request line on stdin with
    `handler(request)`; an exception becomes {"error": ...} and the worker goes on."""
    _send(hello)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = handler(json.loads(line))
        except Exception as exc:  # reported to the driver, which raises it there
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        _send(reply)


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(_TAG + json.dumps(message) + "\n")
    sys.stdout.flush()


def timed(fn: Callable[[], Any], *, sync: Callable[[], None] | None = None) -> tuple[float, Any]:
    """Wall-clock seconds of fn() (after `sync`, e.g. torch.cuda.synchronize) and its result."""
    start = time.perf_counter()
    result = fn()
    if sync is not None:
        sync()
    return time.perf_counter() - start, result


def write_json(name: str, payload: dict[str, Any], path: str | None = None) -> Path:
    """Write `payload` to `path`, or bench/results/<name>-<time>.json; returns the path."""
    out = Path(path) if path else RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return out


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if n else c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) < 1e-2:
            return f"{value:.1e}"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
