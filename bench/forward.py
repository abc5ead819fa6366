"""Forward latency, throughput and memory of the full M2FP R101, reference vs optimized.

Builds the R101 with seeded random weights (no download; or --model-dir for real ones), runs
each mode in its own worker process (own threads, own peak RSS) and interleaves their runs,
so both see the same machine load. Prints a table, the largest output difference of each
mode from the fp32 reference, and writes JSON to bench/results/.

    .venv/bin/python bench/forward.py                                  # 640x864, batch 1
    .venv/bin/python bench/forward.py --sizes 640x864,800x1216 --batches 1,2 --repeats 7
    .venv/bin/python bench/forward.py --modes plain,fast,fast-bf16     # + bf16 autocast
    .venv/bin/python bench/forward.py --device cuda --modes fast-fp16 --batches 1,4,8,16
    .venv/bin/python bench/forward.py --e2e 1280x1920    # + Parser.parse and an app request

Modes: plain (the reference model, fp32), fast (optimize_for_inference, fp32), fast-bf16,
fast-fp16 (autocast; fp16 on CUDA only), fast-nchw / fast-channels-last (the memory format
forced), and --ablation: plain, then optimize_for_inference's changes added one by one (+fold:
BatchNorm folded; +channels-last, with an accurate channels-last GroupNorm; +gather:
deformable attention as one gather; +onednn-linear: the encoder's linears on oneDNN;
+decoder: the lean decoder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    Worker,
    machine_info,
    print_table,
    summarize,
    write_json,
)

MODES = {
    "plain": ["--mode", "plain"],
    "fast": ["--mode", "fast"],
    "fast-bf16": ["--mode", "fast", "--dtype", "bf16"],
    "fast-fp16": ["--mode", "fast", "--dtype", "fp16"],
    "fast-nchw": ["--mode", "fast", "--memory-format", "nchw"],
    "fast-channels-last": ["--mode", "fast", "--memory-format", "channels-last"],
    # optimize_for_inference's changes one at a time, cumulative (--ablation runs them all)
    "+fold": ["--mode", "ablation", "--steps", "1"],
    "+channels-last": ["--mode", "ablation", "--steps", "2"],
    "+gather": ["--mode", "ablation", "--steps", "3"],
    "+onednn-linear": ["--mode", "ablation", "--steps", "4"],
    "+decoder": ["--mode", "ablation", "--steps", "5"],
}
ABLATION = "plain,+fold,+channels-last,+gather,+onednn-linear,+decoder"


def _pairs(text: str) -> list[tuple[int, int]]:
    """'640x864,800x1216' → [(640, 864), (800, 1216)] as (height, width)."""
    out = []
    for item in text.split(","):
        h, w = item.lower().split("x")
        out.append((int(h), int(w)))
    return out


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _max_diff(a: Path, b: Path) -> dict[str, float]:
    """Largest absolute differences of the logits, and for modes that are not meant to be
    equal (bf16, fp16) how often they agree where it matters downstream: the sign of a mask
    logit (mask > 0) and each query's most likely class."""
    with np.load(a) as x, np.load(b) as y:
        out = {k: float(np.abs(x[k] - y[k]).max()) for k in ("class_logits", "mask_logits")}
        out["mask_sign_agreement"] = float(
            ((x["mask_logits"] > 0) == (y["mask_logits"] > 0)).mean()
        )
        out["class_argmax_agreement"] = float(
            (x["class_logits"].argmax(-1) == y["class_logits"].argmax(-1)).mean()
        )
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=_pairs, default=_pairs("640x864"), help="HxW[,HxW...]")
    ap.add_argument("--batches", type=_ints, default=[1])
    ap.add_argument("--modes", default="plain,fast", help=",".join(MODES))
    ap.add_argument("--ablation", action="store_true", help=f"--modes {ABLATION}")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per mode and case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model-dir", default=None, help="real weights instead of seeded ones")
    ap.add_argument(
        "--e2e",
        type=_pairs,
        default=[],
        help="photo HxW: also time Parser.parse and one app request vs the bare forward",
    )
    ap.add_argument("--json", default=None, help="output path (default bench/results/...)")
    args = ap.parse_args()
    modes = (ABLATION if args.ablation else args.modes).split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")

    common = ["--threads", str(args.threads), "--device", args.device]
    if args.model_dir:
        common += ["--model-dir", args.model_dir]
    worker_py = str(Path(__file__).with_name("_ours.py"))
    workers: dict[str, Worker] = {}
    rows, cases = [], []
    try:
        for m in modes:
            workers[m] = Worker(m, [sys.executable, worker_py, *MODES[m], *common])
        with tempfile.TemporaryDirectory(prefix="m2fp-bench-") as tmp:
            for h, w in args.sizes:
                for b in args.batches:
                    cases.append(_forward_case(workers, modes, h, w, b, args, Path(tmp), rows))
            e2e_cases = [_e2e_case(workers, modes, h, w, args) for h, w in args.e2e]
    finally:
        for worker in workers.values():
            worker.close()

    print(f"\nM2FP R101 forward, {args.threads} threads, device {args.device}, "
          f"{args.repeats} interleaved timed runs per cell")  # fmt: skip
    print_table(
        ["mode", "input", "batch", "median s", "p95 s", "min s", "img/s", "peak RSS MB",
         "GPU peak MB", "vs plain", "max|Δcls|", "max|Δmask|", "mask>0 same"],
        rows,
    )  # fmt: skip
    for case in e2e_cases:
        h, w = case["photo"]
        hp, wp = case["model_input_hw"]
        print(f"\n{case['mode']}: one {w}x{h} JPEG photo (model input {wp}x{hp}), "
              f"{args.repeats} interleaved runs")  # fmt: skip
        print_table(["step", "median s", "p95 s", "× forward"], case["rows"])
    out = write_json(
        "forward",
        {"machine": machine_info(), "args": vars(args), "cases": cases, "e2e": e2e_cases},
        args.json,
    )
    print(f"\nJSON: {out}")


def _forward_case(workers, modes, h, w, b, args, tmp: Path, rows: list) -> dict[str, Any]:
    req = {"op": "forward", "height": h, "width": w, "batch": b}
    for m in modes:  # warm-up, untimed
        workers[m].request(**req, warmup=args.warmup, repeats=0)
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    peaks: dict[str, dict[str, Any]] = {}
    for r in range(args.repeats):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]  # rotate who goes first
        for m in order:
            save = str(tmp / f"{m}.npz") if r == 0 else None
            reply = workers[m].request(**req, warmup=0, repeats=1, save=save)
            seconds[m] += reply["seconds"]
            peak = peaks.setdefault(m, reply)
            for key in ("window_peak_rss_mb", "process_peak_rss_mb", "cuda_peak_mb"):
                if reply[key] is not None:
                    peak[key] = max(peak[key] or 0, reply[key])
    base = "plain" if "plain" in modes else None
    result = {"input": [h, w], "batch": b, "modes": {}}
    for m in modes:
        stats = summarize(seconds[m])
        diff = _max_diff(tmp / f"{m}.npz", tmp / f"{base}.npz") if base and m != base else None
        ratio = None
        if base and m != base:
            ratio = stats["median_s"] / summarize(seconds[base])["median_s"]
        result["modes"][m] = {
            **stats,
            "seconds": seconds[m],
            "images_per_s": b / stats["median_s"],
            "process_peak_rss_mb": peaks[m]["process_peak_rss_mb"],
            "forward_peak_rss_mb": peaks[m]["window_peak_rss_mb"],
            "cuda_peak_mb": peaks[m]["cuda_peak_mb"],
            "ratio_to_plain": ratio,
            "max_abs_diff_to_plain": diff,
        }
        rows.append([
            m, f"{h}x{w}", b, stats["median_s"], stats["p95_s"], stats["min_s"],
            b / stats["median_s"],
            peaks[m]["process_peak_rss_mb"], peaks[m]["cuda_peak_mb"], ratio,
            diff["class_logits"] if diff else None, diff["mask_logits"] if diff else None,
            f"{diff['mask_sign_agreement']:.5%}" if diff else None,
        ])  # fmt: skip
    return result


def _e2e_case(workers, modes, h, w, args) -> dict[str, Any]:
    mode = next((m for m in modes if m != "plain"), modes[0])
    req = {"op": "e2e", "height": h, "width": w, "warmup": args.warmup, "repeats": args.repeats}
    reply = workers[mode].request(**req)
    forward = summarize(reply["seconds"]["forward"])["median_s"]
    steps = {
        "forward": "bare forward",
        "parse": "Parser.parse (resize, forward, post-process)",
        "request": "app request (decode, parse, overlay PNG)",
    }
    rows, stats = [], {}
    for key, label in steps.items():
        stats[key] = {**summarize(reply["seconds"][key]), "seconds": reply["seconds"][key]}
        rows.append([label, stats[key]["median_s"], stats[key]["p95_s"],
                     stats[key]["median_s"] / forward])  # fmt: skip
    request_to_parse = stats["request"]["median_s"] / stats["parse"]["median_s"]
    rows.append(["request ÷ parse", request_to_parse, None, None])
    return {"mode": mode, "photo": [h, w], "model_input_hw": reply["model_input_hw"],
            "steps": stats, "request_to_parse": request_to_parse, "rows": rows}  # fmt: skip


if __name__ == "__main__":
    main()
