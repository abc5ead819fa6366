"""Worker memory for concurrent uploads at the pixel cap: before and after, side by side.

Usage: .venv/bin/python bench/decode_concurrency.py [--before REV] [--concurrency 6]
           [--width 8000 --height 5000] [--slots N] [--memory-mb MB] [--wait-s S]
           [--modes rgb8,...]

For each mode (8-bit RGB, 8-bit RGBA, 16-bit grey, palette with a transparent entry) it writes
one PNG of width x height pixels, then runs `--concurrency` threads that each decode it with
`security.uploads.load_upload`, in a fresh process per (code, mode): with the code of git
revision `--before` (default: the merge base with main, extracted to a temporary directory);
with the working tree and no budget (what the fewer copies alone give); with the working tree
through the decode budget, as the service does (`--slots`, `--memory-mb`; default: the
service's defaults for this machine; `--wait-s` for a slot, default 600 so that all uploads
decode: the service waits 10 s, then answers 503 with Retry-After, web/service.py
DECODE_WAIT_S). It prints the worker's peak RSS growth over its idle RSS (VmHWM - VmRSS
before the uploads), the wall time of the slowest upload, and the ratios to before. Images are
synthetic.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = ("rgb8", "rgba8", "grey16", "palette")


# ---------------------------------------------------------------------------------- inputs


def make_png(mode: str, width: int, height: int) -> bytes:
    """A synthetic PNG at the size: gradients (so it compresses like a scan, not like noise)."""
    import numpy as np
    from PIL import Image

    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    if mode == "grey16":
        im = Image.fromarray((x * y * 65535).astype(np.uint16))
    elif mode == "palette":
        im = Image.fromarray(((x + y) * 127).astype(np.uint8), "L").convert("P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
        params = {"transparency": 0}
        return _encode(im, params)
    else:
        r = (x * 255).astype(np.uint8).repeat(height, 0)
        g = (y * 255).astype(np.uint8).repeat(width, 1)
        b = ((x + y) * 127).astype(np.uint8)
        bands = [r, g, b] + ([((1 - x * y) * 255).astype(np.uint8)] if mode == "rgba8" else [])
        im = Image.fromarray(np.dstack(bands))
    return _encode(im, {})


def _encode(im: object, params: dict[str, object]) -> bytes:
    buffer = BytesIO()
    im.save(buffer, "PNG", compress_level=1, **params)  # type: ignore[attr-defined]
    return buffer.getvalue()


def extract(rev: str, into: Path) -> Path:
    """The `security` package and settings.py of git revision `rev`, under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "security", "settings.py"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


# ---------------------------------------------------------------------------------- worker


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.root)
    from security import uploads
    from security.errors import ServiceError

    data = Path(args.image).read_bytes()
    width, height = args.width, args.height
    policy = uploads.UploadPolicy(max_pixels=max(width * height, uploads.UploadPolicy().max_pixels))
    kwargs: dict[str, object] = {"policy": policy}
    budget_text = "none"
    if args.budget:
        from security import decode_budget

        budget = decode_budget.budget_for(
            slots=args.slots or None,
            memory_bytes=int(args.memory_mb * 1024 * 1024) if args.memory_mb else None,
            memory_limit=_memory_limit(),
        )
        kwargs["budget"] = budget
        kwargs["wait_s"] = args.wait_s
        budget_text = f"{budget.slots} slots, {budget.memory_bytes / 2**20:.0f} MiB"
    uploads.load_upload(uploads_sample(), **kwargs)  # warm the imports and Pillow's plugins
    idle = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    answers: list[str] = []
    seconds: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        started = time.perf_counter()
        try:
            uploads.load_upload(data, **kwargs)
            answer = "200"
        except ServiceError as exc:
            answer = str(exc.status)
        with lock:
            answers.append(answer)
            seconds.append(time.perf_counter() - started)

    threads = [threading.Thread(target=one) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak = _status_mb("VmHWM")
    print(
        json.dumps(
            {
                "idle_mb": idle,
                "growth_mb": peak - idle,
                "slowest_s": max(seconds),
                "answers": " ".join(sorted(answers)),
                "budget": budget_text,
            }
        )
    )


def uploads_sample() -> bytes:
    from PIL import Image

    return _encode(Image.new("RGB", (8, 8)), {})


def _memory_limit() -> int:
    sys.path.insert(0, str(REPO))
    from web.overload import default_probe

    return default_probe()().limit


# ------------------------------------------------------------------------------------ main


def run_one(root: Path, image: Path, args: argparse.Namespace, *, budget: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--root",
        str(root),
        "--image",
        str(image),
        "--width",
        str(args.width),
        "--height",
        str(args.height),
        "--concurrency",
        str(args.concurrency),
        "--slots",
        str(args.slots),
        "--memory-mb",
        str(args.memory_mb),
        "--wait-s",
        str(args.wait_s),
    ] + (["--budget"] if budget else [])
    done = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=1800)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", default=None, help="git revision (default: merge base)")
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--width", type=int, default=8000)
    parser.add_argument("--height", type=int, default=5000)
    parser.add_argument("--slots", type=int, default=0, help="0: the service's default")
    parser.add_argument("--memory-mb", type=float, default=0, help="0: the service's default")
    parser.add_argument("--wait-s", type=float, default=600.0)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--budget", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    before = args.before or _merge_base()
    print(
        f"{args.concurrency} concurrent uploads of {args.width}x{args.height} PNGs; "
        f"before: {before[:10]}, after: working tree; {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'mode':8} {'bytes':>9} | {'before':>13} | {'after, no budget':>16} | "
        f"{'after, budget':>13} | ratio to before: MB, s | answers (budget)"
    )
    with tempfile.TemporaryDirectory(prefix="m2fp-bench-") as tmp:
        old = extract(before, Path(tmp) / "before")
        for mode in args.modes.split(","):
            image = Path(tmp) / f"{mode}.png"
            image.write_bytes(make_png(mode, args.width, args.height))
            b = run_one(old, image, args, budget=False)
            n = run_one(REPO, image, args, budget=False)
            a = run_one(REPO, image, args, budget=True)
            ratios = [
                f"{r['growth_mb'] / max(b['growth_mb'], 1):.2f}, "
                f"{r['slowest_s'] / max(b['slowest_s'], 1e-3):.2f}"
                for r in (n, a)
            ]
            print(
                f"{mode:8} {image.stat().st_size:>9} | {_cell(b):>13} | {_cell(n):>16} | "
                f"{_cell(a):>13} | {ratios[0]} / {ratios[1]} | "
                f"{a['answers']} ({a['budget']})"
            )


def _cell(result: dict) -> str:
    return f"{result['growth_mb']:.0f} MB {result['slowest_s']:.1f} s"


def _merge_base() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "merge-base", "HEAD", "main"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


if __name__ == "__main__":
    main()
