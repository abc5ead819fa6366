"""What `size=original` costs: a 12 MP photo's request stages at the working size and at its
own size.

The model's forward is the same at both sizes (it always sees the photo resized to a 640 short
side), so it is left out; what changes is measured stage by stage, each size in a fresh process
so its peak RSS is its own:

- decode: `security.uploads.load_upload` of a JPEG of the photo with the service's policy
  (reduced-scale DCT decoding and a Lanczos downscale to `--max-side`) and with the policy
  `size=original` uses (full decode, no downscale);
- post-process: `postprocess_image` + the numpy result from R101-shaped raw outputs
  (`bench/postprocess_sizes.py`'s: 100 queries, `--candidates` confident pairs, `--humans`),
  to the working size and to the photo's size;
- render: each output the API gives (overlay PNG, cutout PNG, matte PNG, JSON with RLE masks
  and the label map, the layered PSD).

Usage: .venv/bin/python bench/original_size.py [--size 4000x3000] [--max-side 1920]
       [--candidates 40] [--humans 4] [--threads 2] [--repeats 3]
Prints one JSON line per size: best wall and CPU seconds of each stage over the repeats, the
load average, encoded sizes and peak RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _jpeg(width: int, height: int) -> bytes:
    """A photo-like JPEG: smooth gradients with mild noise, quality 90."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 200 + 30, y / height * 180 + 40, (x + y) / (width + height) * 160])
    rgb = rgb.transpose(1, 2, 0) + rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _best(fn, repeats: int) -> tuple[tuple[float, float], object]:
    """(best wall seconds, best CPU seconds of this process) over the repeats, last output.
    CPU seconds are the steadier figure on a shared machine; with 2 threads they can be up
    to twice the wall time of an unloaded one."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        out = None  # the previous run's arrays are freed before the next run
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return (wall, cpu), out


def run_one(args: argparse.Namespace, mode: str) -> dict:
    import torch

    from bench.postprocess_sizes import _outputs
    from m2fp import layers, render
    from m2fp.export import result_to_json
    from m2fp.parser import _to_result
    from m2fp.postprocess import postprocess_image
    from security.uploads import UploadPolicy, load_upload

    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    data = _jpeg(width, height)
    policy = UploadPolicy(max_bytes=64 << 20, max_side=args.max_side)
    if mode == "original":
        policy = UploadPolicy(max_bytes=64 << 20, max_side=policy.max_pixels)
    base = _rss_mb()
    stages: dict[str, tuple[float, float]] = {}
    stages["decode"], decoded = _best(lambda: load_upload(data, policy=policy), args.repeats)
    pixels = decoded.pixels
    out_hw = pixels.shape[:2]
    # raw outputs of the model for the photo (the same at both sizes)
    class_logits, mask_logits, padded, resized = _outputs(
        height, width, args.candidates, args.humans
    )

    def post():
        with torch.inference_mode():
            parsed = postprocess_image(
                class_logits, mask_logits, padded_hw=padded, resized_hw=resized, output_hw=out_hw
            )
            return _to_result(parsed)

    stages["postprocess"], result = _best(post, args.repeats)
    semantic = result.semantic
    parts = tuple(range(1, 20))
    renders = {
        "overlay_png": lambda: render.encode_image(render.overlay(pixels, semantic), "png"),
        "cutout_png": lambda: render.encode_image(render.cutout(pixels, semantic, parts), "png"),
        "matte_png": lambda: render.encode_image(render.matte(semantic, parts), "png"),
        "json_rle": lambda: json.dumps(result_to_json(result, pixels)),
        "psd": lambda: layers.layered_psd(
            layers.layer_stack(pixels, semantic, [p.mask for p in result.persons]),
            width=out_hw[1],
            height=out_hw[0],
        ),
    }
    sizes = {}
    for name, fn in renders.items():
        stages[name], encoded = _best(fn, args.repeats)
        sizes[name] = len(encoded)
    return {
        "mode": mode,
        "photo": f"{width}x{height}",
        "output": f"{out_hw[1]}x{out_hw[0]}",
        "persons": len(result.persons),
        "seconds": {k: round(v[0], 3) for k, v in stages.items()},
        "cpu_seconds": {k: round(v[1], 3) for k, v in stages.items()},
        "load_average": round(os.getloadavg()[0], 1),
        "bytes": sizes,
        "peak_rss_mb": round(_rss_mb()),
        "peak_rss_above_start_mb": round(_rss_mb() - base),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--max-side", type=int, default=1920)
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--humans", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", choices=("working", "original"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_one(args, args.mode)))
        return
    for mode in ("working", "original"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        print(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
