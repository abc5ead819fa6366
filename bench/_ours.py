"""Benchmark worker for this project's model: `python bench/_ours.py --mode plain|fast ...`.

Started by bench/forward.py and bench/compare_modelscope.py (see bench/_common.Worker); it
loads or builds the model once, then answers requests:
  {"op": "forward", "height", "width", "batch", "warmup", "repeats", "seed", "save"?}
  {"op": "parse", "height", "width", "warmup", "repeats", "seed", "save"?}
  {"op": "e2e", "height", "width", "warmup", "repeats", "seed"}: forward vs parse vs request
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    peak_rss_mb,
    photo_like,
    random_batch,
    reset_peak_rss,
    serve,
    timed,
    window_peak_mb,
)
from m2fp.build import load_model  # noqa: E402
from m2fp.config import M2FPConfig  # noqa: E402
from m2fp.modeling.m2fp import M2FP  # noqa: E402
from m2fp.optimize import optimize_for_inference  # noqa: E402
from m2fp.parser import Parser  # noqa: E402
from tests.support.model_factory import seeded_model  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def seeded_r101(seed: int = 0) -> M2FP:
    """The full R101 with seeded random weights scaled as in tests/fixtures/m2fp/tiny_reference (the
    tests' recipe), so BatchNorm statistics are not trivial and parses find instances."""
    return seeded_model(M2FPConfig.r101(), seed)


ABLATION_STEPS = ("fold", "channels-last", "gather", "onednn-linear", "decoder")


def ablation_model(model: M2FP, steps: int) -> M2FP:
    """The reference model with the first `steps` of optimize_for_inference's changes, in
    ABLATION_STEPS order (5 = all of them, what optimize_for_inference returns in fp32)."""
    from m2fp.modeling.deform_attn import MSDeformAttn
    from m2fp.optimize import (
        _swap_group_norms,
        _use_onednn_linears,
        fold_batchnorm_,
        onednn_linear_available,
    )

    model = copy.deepcopy(model).eval().requires_grad_(False)
    if steps >= 1:
        fold_batchnorm_(model)
    if steps >= 2:
        model.to(memory_format=torch.channels_last)
        _swap_group_norms(model)
        model.channels_last = model.sem_seg_head.pixel_decoder.channels_last = True
    if steps >= 3:
        for module in model.modules():
            if isinstance(module, MSDeformAttn):
                module.sampler = "gather"
    if steps >= 4 and onednn_linear_available():
        _use_onednn_linears(model.sem_seg_head.pixel_decoder.transformer)
    if steps >= 5:
        model.sem_seg_head.predictor.fast = True
    return model


class OursWorker:
    def __init__(self, args: argparse.Namespace) -> None:
        torch.set_num_threads(args.threads)
        self.device = torch.device(args.device)
        base = load_model(args.model_dir) if args.model_dir else seeded_r101(args.seed)
        if args.mode == "ablation":
            self.model = ablation_model(base, args.steps).to(self.device)
        elif args.mode == "fast":
            self.model = optimize_for_inference(
                base,
                device=self.device,
                dtype=DTYPES[args.dtype],
                channels_last={"auto": None, "nchw": False, "channels-last": True}[
                    args.memory_format
                ],
            )
        else:
            if args.dtype != "fp32":
                raise SystemExit("--mode plain is the fp32 reference")
            self.model = base.to(self.device)
        self.args = args
        self._parser = None

    def hello(self) -> dict[str, Any]:
        return {"impl": f"ours-{self.args.mode}", "threads": torch.get_num_threads()}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _measure(self, fn, warmup: int, repeats: int) -> tuple[dict[str, Any], Any]:
        result = None
        for _ in range(warmup):
            result = fn()
        self._sync()
        reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        seconds = []
        for _ in range(repeats):
            dt, result = timed(fn, sync=self._sync)
            seconds.append(dt)
        stats = {
            "seconds": seconds,
            "window_peak_rss_mb": window_peak_mb(),
            "process_peak_rss_mb": peak_rss_mb(),
            "cuda_peak_mb": (
                torch.cuda.max_memory_allocated(self.device) / 2**20
                if self.device.type == "cuda"
                else None
            ),
        }
        return stats, result

    def forward(self, req: dict[str, Any]) -> dict[str, Any]:
        batch = torch.from_numpy(
            random_batch(req["batch"], req["height"], req["width"], req.get("seed", 0))
        ).float()
        if self.device.type == "cuda":
            batch = batch.pin_memory()

        def run():
            with torch.inference_mode():
                return self.model(batch)

        stats, out = self._measure(run, req.get("warmup", 1), req.get("repeats", 1))
        if req.get("save") and out is not None:
            np.savez(
                req["save"],
                class_logits=out.class_logits.float().cpu().numpy(),
                mask_logits=out.mask_logits.float().cpu().numpy(),
            )
        return stats

    def parse(self, req: dict[str, Any]) -> dict[str, Any]:
        if self._parser is None:
            self._parser = Parser(self.model, device=self.device)
        image = photo_like(req["height"], req["width"], req.get("seed", 0))
        stats, result = self._measure(
            lambda: self._parser.parse(image), req.get("warmup", 1), req.get("repeats", 1)
        )
        if req.get("save") and result is not None:
            save_parse(req["save"], result)
        stats["instances"] = len(result.instances) if result is not None else None
        return stats

    def e2e(self, req: dict[str, Any]) -> dict[str, Any]:
        """The bare forward at the size the parser feeds the model, `Parser.parse`, and one
        `POST /api/v1/parse?output=overlay` through the Flask app (decode → parse → overlay
        PNG), on the same JPEG photo, interleaved `repeats` times."""
        import io

        from PIL import Image

        from app import create_app

        photo = photo_like(req["height"], req["width"], req.get("seed", 0))
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, format="JPEG", quality=90)
        jpeg = buf.getvalue()
        pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))  # what the app sees
        if self._parser is None:
            self._parser = Parser(self.model, device=self.device)
        prepared = self._parser.prepare(pixels)
        batch = torch.zeros((1, 3, *prepared.padded_hw))
        batch[0, :, : prepared.resized_hw[0], : prepared.resized_hw[1]] = torch.from_numpy(
            prepared.pixels
        ).permute(2, 0, 1)
        app = create_app(
            {"model": self.model, "device": str(self.device), "rate_limit": "100000 per minute",
             "ban_after": 100000, "warmup": True}
        )  # fmt: skip
        client = app.test_client()
        deadline = time.monotonic() + 600
        while client.get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the app's engine did not become ready")
            time.sleep(0.2)

        def forward():
            with torch.inference_mode():
                return self.model(batch)

        def parse():
            return self._parser.parse(pixels)

        def request():
            reply = client.post(
                "/api/v1/parse?output=overlay",
                data=jpeg,
                headers={"Content-Type": "image/jpeg", "Accept": "image/png"},
            )
            if reply.status_code != 200 or reply.mimetype != "image/png":
                raise RuntimeError(f"request failed: {reply.status_code} {reply.data[:200]!r}")
            return len(reply.data)

        steps = {"forward": forward, "parse": parse, "request": request}
        for fn in steps.values():  # warm-up
            for _ in range(req.get("warmup", 1)):
                fn()
        seconds: dict[str, list[float]] = {k: [] for k in steps}
        for r in range(req.get("repeats", 1)):
            names = list(steps)[r % 3 :] + list(steps)[: r % 3]
            for name in names:
                dt, _ = timed(steps[name], sync=self._sync)
                seconds[name].append(dt)
        return {
            "seconds": seconds,
            "model_input_hw": list(prepared.padded_hw),
            "jpeg_bytes": len(jpeg),
            "process_peak_rss_mb": peak_rss_mb(),
        }

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        if req["op"] == "forward":
            return self.forward(req)
        if req["op"] == "parse":
            return self.parse(req)
        if req["op"] == "e2e":
            return self.e2e(req)
        raise ValueError(f"unknown op {req['op']!r}")


def save_parse(path: str, result: Any) -> None:
    """The parse result in the layout compare_modelscope.py compares: semantic map and the
    instances (category, score, mask) in the pipeline's order."""
    inst = result.instances
    np.savez_compressed(
        path,
        semantic=result.semantic,
        labels=np.array([i.category_id for i in inst], dtype=np.int64),
        scores=np.array([i.score for i in inst], dtype=np.float64),
        masks=(
            np.stack([i.mask for i in inst])
            if inst
            else np.zeros((0, *result.semantic.shape), bool)
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark worker (see module docstring)")
    parser.add_argument("--mode", choices=("plain", "fast", "ablation"), required=True)
    parser.add_argument("--steps", type=int, default=0, help="ablation: how many steps")
    parser.add_argument(
        "--memory-format", choices=("auto", "nchw", "channels-last"), default="auto"
    )
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    worker = OursWorker(parser.parse_args())
    serve(worker.hello(), worker.handle)


if __name__ == "__main__":
    main()
