"""Side by side with ModelScope's own M2FP, in one run, on identical weights and inputs.

Saves one seeded R101 checkpoint (a ModelScope-style model directory), which both sides load.
Each implementation runs in its own process (own interpreter, 2 threads, own peak RSS):
ModelScope's in .venv-modelscope (make it with `bash bench/setup_modelscope.sh`), ours in
.venv. Timed runs alternate between the processes, so both see the same machine load.

1. forward at 640x864: ModelScope's `M2FP.forward` vs our optimized model (and, with
   --with-plain, our reference model); max |Δ| of the logits must be ≤ 1e-4; time ratio target
   ≤ 0.8 (goal 0.6); peak RSS target ≤ 1.5 GB.
2. ModelScope's pipeline call vs our `Parser.parse` on a 1920x1280 photo-like image (target
   ≤ 0.6); the instances are compared too.

    bash bench/setup_modelscope.sh                 # once
    .venv/bin/python bench/compare_modelscope.py [--repeats 5] [--with-plain]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    REPO,
    Worker,
    machine_info,
    print_table,
    summarize,
    write_json,
)

MS_PYTHON = REPO / ".venv-modelscope" / "bin" / "python"
ATOL = 1e-4
RSS_LIMIT_MB = 1.5 * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per implementation")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", default="640x864", help="forward input HxW")
    ap.add_argument("--photo", default="1280x1920", help="pipeline/parse image HxW")
    ap.add_argument("--with-plain", action="store_true", help="also time our reference model")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not MS_PYTHON.exists():
        sys.exit(f"{MS_PYTHON} is missing: run `bash bench/setup_modelscope.sh` first")
    h, w = (int(v) for v in args.size.lower().split("x"))
    ph, pw = (int(v) for v in args.photo.lower().split("x"))
    start_load = os.getloadavg()

    from bench._ours import seeded_r101
    from m2fp.build import save_model_dir

    report: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="m2fp-compare-") as tmp:
        model_dir = save_model_dir(seeded_r101(args.seed), Path(tmp) / "model")
        common = ["--model-dir", str(model_dir), "--threads", str(args.threads)]
        ours_py = str(REPO / "bench" / "_ours.py")
        argvs = {
            "modelscope": [str(MS_PYTHON), str(REPO / "bench" / "_modelscope.py"), *common],
            "ours-fast": [sys.executable, ours_py, "--mode", "fast", *common],
        }
        if args.with_plain:
            argvs["ours-plain"] = [sys.executable, ours_py, "--mode", "plain", *common]
        workers: dict[str, Worker] = {}
        try:
            for name, argv in argvs.items():
                workers[name] = Worker(name, argv)
            report["forward"] = _forward(workers, h, w, args, Path(tmp))
            if not args.skip_pipeline:
                report["pipeline"] = _pipeline(workers, ph, pw, args, Path(tmp))
        finally:
            for worker in workers.values():
                worker.close()
    report["loadavg_start"], report["loadavg_end"] = start_load, os.getloadavg()
    print(f"\nload average at start {_load(start_load)}, at end {_load(os.getloadavg())}")
    print(f"JSON: {write_json('compare-modelscope', report, args.json)}")


def _load(values: tuple[float, float, float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def _forward(workers: dict[str, Worker], h: int, w: int, args, tmp: Path) -> dict[str, Any]:
    names = list(workers)
    req = {"op": "forward", "height": h, "width": w, "batch": 1, "seed": args.seed}
    for name in names:
        workers[name].request(**req, warmup=args.warmup, repeats=0)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, dict[str, float]] = {n: {} for n in names}
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            save = str(tmp / f"{name}.npz") if r == 0 else None
            reply = workers[name].request(**req, warmup=0, repeats=1, save=save)
            seconds[name] += reply["seconds"]
            for key in ("window_peak_rss_mb", "process_peak_rss_mb"):
                if reply[key] is not None:
                    peaks[name][key] = max(peaks[name].get(key, 0.0), reply[key])
    ms_median = summarize(seconds["modelscope"])["median_s"]
    rows, result = [], {}
    for name in names:
        stats = summarize(seconds[name])
        diff = None
        if name != "modelscope":
            with np.load(tmp / f"{name}.npz") as a, np.load(tmp / "modelscope.npz") as b:
                diff = {k: float(np.abs(a[k] - b[k]).max()) for k in a.files}
        ratio = stats["median_s"] / ms_median
        result[name] = {**stats, "seconds": seconds[name], **peaks[name], "ratio": ratio,
                        "max_abs_diff_to_modelscope": diff}  # fmt: skip
        rows.append([
            name, stats["median_s"], stats["p95_s"], ratio,
            peaks[name].get("process_peak_rss_mb"), peaks[name].get("window_peak_rss_mb"),
            diff["class_logits"] if diff else None, diff["mask_logits"] if diff else None,
        ])  # fmt: skip
    print(f"\nforward, {h}x{w}, batch 1, {args.threads} threads, {args.repeats} alternating runs")
    print_table(
        ["impl", "median s", "p95 s", "÷ ModelScope", "peak RSS MB", "fwd peak RSS MB",
         "max|Δcls|", "max|Δmask|"],
        rows,
    )  # fmt: skip
    fast = result["ours-fast"]
    diff = fast["max_abs_diff_to_modelscope"]
    checks = {
        "ratio ≤ 0.8 (goal 0.6)": fast["ratio"] <= 0.8,
        f"outputs within {ATOL:g}": max(diff.values()) <= ATOL,
        "peak RSS ≤ 1.5 GB": fast.get("process_peak_rss_mb", 0) <= RSS_LIMIT_MB,
    }
    for label, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  ours-fast {label}")
    result["checks"] = checks
    return result


def _pipeline(workers: dict[str, Worker], h: int, w: int, args, tmp: Path) -> dict[str, Any]:
    req = {"height": h, "width": w, "seed": args.seed}
    calls = {"modelscope": ("pipeline", workers["modelscope"]),
             "ours-fast": ("parse", workers["ours-fast"])}  # fmt: skip
    for op, worker in calls.values():
        worker.request(**req, op=op, warmup=args.warmup, repeats=0)
    seconds: dict[str, list[float]] = {n: [] for n in calls}
    instances: dict[str, Any] = {}
    for r in range(args.repeats):
        order = list(calls) if r % 2 == 0 else list(calls)[::-1]
        for name in order:
            op, worker = calls[name]
            save = str(tmp / f"{name}-parse.npz") if r == 0 else None
            reply = worker.request(**req, op=op, warmup=0, repeats=1, save=save)
            seconds[name] += reply["seconds"]
            instances[name] = reply.get("instances")
    ms = summarize(seconds["modelscope"])
    ours = summarize(seconds["ours-fast"])
    ratio = ours["median_s"] / ms["median_s"]
    agreement = _compare_instances(tmp / "ours-fast-parse.npz", tmp / "modelscope-parse.npz")
    print(f"\nModelScope pipeline call vs our Parser.parse, {w}x{h} photo-like image")
    print_table(
        ["impl", "median s", "p95 s", "÷ ModelScope", "instances"],
        [["modelscope pipeline", ms["median_s"], ms["p95_s"], 1.0, instances["modelscope"]],
         ["ours Parser.parse", ours["median_s"], ours["p95_s"], ratio, instances["ours-fast"]]],
    )  # fmt: skip
    print(f"  {'PASS' if ratio <= 0.6 else 'FAIL'}  parse ratio ≤ 0.6")
    print(f"  instances: {agreement}")
    return {"modelscope": {**ms, "seconds": seconds["modelscope"]},
            "ours": {**ours, "seconds": seconds["ours-fast"]},
            "ratio": ratio, "instances": agreement}  # fmt: skip


def _compare_instances(ours_path: Path, ms_path: Path) -> dict[str, Any]:
    """Same (category, score) sets after sorting, and how many mask pixels differ."""
    with np.load(ours_path) as a, np.load(ms_path) as b:
        order_a = np.lexsort((a["scores"], a["labels"]))
        order_b = np.lexsort((b["scores"], b["labels"]))
        same_count = len(order_a) == len(order_b)
        out: dict[str, Any] = {"ours": len(order_a), "modelscope": len(order_b)}
        if not same_count:
            return {**out, "same_categories": False}
        out["same_categories"] = bool(np.array_equal(a["labels"][order_a], b["labels"][order_b]))
        out["max_score_diff"] = (
            float(np.abs(a["scores"][order_a] - b["scores"][order_b]).max()) if len(order_a) else 0
        )
        differing = int((a["masks"][order_a] != b["masks"][order_b]).sum())
        out["mask_pixels_differing"] = differing
        out["mask_pixels_total"] = int(a["masks"].size)
        return out


if __name__ == "__main__":
    main()
