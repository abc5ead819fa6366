"""Time one full-size M2FP R101 forward on CPU with seeded random weights.

Usage: .venv/bin/python bench/forward_r101.py [--threads 2] [--height 640] [--width 864]
       [--repeats 3]
Prints build time, each forward time and peak RSS (ru_maxrss) of the process.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2fp.build import build_model  # noqa: E402
from m2fp.config import M2FPConfig  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--height", type=int, default=640)
    parser.add_argument("--width", type=int, default=864)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(M2FPConfig.r101()).to(args.device)
    print(f"build {time.perf_counter() - t0:.2f} s, peak RSS {_rss_mb():.0f} MB")
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 3, args.height, args.width), generator=g).float()
    image = image.to(args.device)
    for i in range(args.repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model(image)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(
            f"forward {i}: {dt:.2f} s  mask_logits {tuple(out.mask_logits.shape)}"
            f"  peak RSS {_rss_mb():.0f} MB"
        )


if __name__ == "__main__":
    main()
