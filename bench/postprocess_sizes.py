"""Post-processing cost (instances, semantic map, persons → numpy) at several photo sizes.

Feeds R101-shaped raw outputs (100 queries, 22 class logits, stride-4 masks of the 640-short-
side input) with `--candidates` confident (query, class) pairs, the rest no-object, and times
`postprocess_image` plus the conversion to a `ParsingResult`. Each size runs in a fresh
process so its peak RSS is its own; `--full` also times the plain computation it replaces
(every top-100 mask at full size, 20 stacked class maps), where memory allows.

Usage: .venv/bin/python bench/postprocess_sizes.py [--sizes 1155x866,2309x1732,4000x3000]
       [--candidates 40] [--humans 4] [--threads 2] [--repeats 3] [--budget-mb 512] [--full]
Prints, per size: instances, persons, each run's wall and CPU seconds, peak RSS (and how much
of it is above the process with its inputs).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _outputs(height: int, width: int, candidates: int, humans: int, seed: int = 0):
    """Raw outputs as the R101 gives them for an image of height x width."""
    import torch
    import torch.nn.functional as F

    from m2fp.transforms import preprocess_shape

    resized = preprocess_shape(height, width)
    padded = tuple(-(-s // 32) * 32 for s in resized)
    g = torch.Generator().manual_seed(seed)
    queries = 100
    class_logits = torch.full((queries, 22), -8.0)
    class_logits[:, 21] = 8.0  # no object
    for q in range(candidates):
        label = 20 if q < humans else 1 + q % 19
        class_logits[q, 21] = -8.0
        class_logits[q, label] = 4.0 + float(torch.rand(1, generator=g))
    # smooth blobs with logits up to about ±20, like a trained model's
    low = torch.randn(queries, 1, padded[0] // 64, padded[1] // 64, generator=g) * 12 - 4
    grid = (padded[0] // 4, padded[1] // 4)
    mask_logits = F.interpolate(low, size=grid, mode="bicubic", align_corners=False)[:, 0]
    return class_logits, mask_logits, padded, resized


def run_one(args: argparse.Namespace, height: int, width: int) -> dict:
    import torch

    from m2fp.parser import _to_result
    from m2fp.postprocess import postprocess_image

    torch.set_num_threads(args.threads)
    class_logits, mask_logits, padded, resized = _outputs(
        height, width, args.candidates, args.humans
    )
    base = _rss_mb()
    times, cpu_times, summary = [], [], None
    for _ in range(args.repeats):
        result = None  # the previous run's arrays are freed before the next run
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            parsed = postprocess_image(
                class_logits,
                mask_logits,
                padded_hw=padded,
                resized_hw=resized,
                output_hw=(height, width),
                memory_budget=args.budget_mb << 20,
            )
            result = _to_result(parsed)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        summary = (len(result.instances), len(result.persons))
        del parsed
    report = {
        "size": f"{width}x{height}",
        "megapixels": round(height * width / 1e6, 2),
        "instances": summary[0],
        "persons": summary[1],
        "seconds": [round(t, 3) for t in times],
        "cpu_seconds": [round(t, 3) for t in cpu_times],
        "peak_rss_mb": round(_rss_mb()),
        "peak_rss_above_inputs_mb": round(_rss_mb() - base),
    }
    if args.full:
        report["full_seconds"], report["full_peak_rss_mb"] = _full(
            class_logits, mask_logits, padded, resized, (height, width)
        )
    return report


def _full(class_logits, mask_logits, padded, resized, output_hw) -> tuple[float, int]:
    """The plain computation: all top-100 masks at full size, 20 stacked class maps."""
    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    with torch.inference_mode():
        masks = F.interpolate(mask_logits[None], size=padded, mode="bilinear")
        masks = masks[..., : resized[0], : resized[1]]
        masks = F.interpolate(masks, size=output_hw, mode="bilinear")[0]
        probs = F.softmax(class_logits, dim=-1)[:, :-1]
        top, idx = probs.flatten().topk(100, sorted=False)
        labels, masks = idx % 21, masks[idx // 21]
        positive = (masks > 0).float()
        mean = (masks.sigmoid() * positive).flatten(1).sum(1) / (positive.flatten(1).sum(1) + 1e-6)
        scores = top * mean
        maps = torch.zeros((20, *output_hw))
        for c in range(20):
            times = torch.zeros(output_hw)
            for i in torch.where(labels == c)[0]:
                if scores[i] >= 0.3:
                    value = masks[i].sigmoid() * scores[i]
                    maps[c] = torch.where(value > 0.5, value + maps[c], maps[c])
                    times += value > 0.5
            maps[c] /= times.clamp(min=1)
        maps.argmax(0).to(torch.uint8).numpy()
        (masks > 0).numpy()
    return round(time.perf_counter() - t0, 3), round(_rss_mb())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1155x866,2309x1732,4000x3000")
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--humans", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-mb", type=int, default=512)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # WxH: run in this process
    args = parser.parse_args()
    if args.one:
        width, height = (int(v) for v in args.one.split("x"))
        print(json.dumps(run_one(args, height, width)))
        return
    print(
        f"candidates {args.candidates} (humans {args.humans}), threads {args.threads}, "
        f"budget {args.budget_mb} MB"
    )
    for size in args.sizes.split(","):
        cmd = [sys.executable, __file__, "--one", size]
        for name in ("candidates", "humans", "threads", "repeats", "budget_mb"):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        cmd += ["--full"] if args.full else []
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            print(f"{size}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        line = (
            f"{r['size']:>10} ({r['megapixels']:5.2f} MP): {r['instances']} instances, "
            f"{r['persons']} persons, seconds {r['seconds']} (CPU {r['cpu_seconds']}), "
            f"peak RSS {r['peak_rss_mb']} MB "
            f"(+{r['peak_rss_above_inputs_mb']} MB)"
        )
        if "full_seconds" in r:
            line += f"; full computation {r['full_seconds']} s, peak RSS {r['full_peak_rss_mb']} MB"
        print(line)


if __name__ == "__main__":
    main()
