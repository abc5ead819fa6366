"""Benchmark worker running ModelScope's own M2FP (modelscope==1.40.2) in .venv-modelscope.

Started by bench/compare_modelscope.py; answers the same requests as bench/_ours.py:
  {"op": "forward", ...}: `M2FP.forward` (normalise, pad, backbone, heads; no post-processing)
  {"op": "pipeline", ...}: the whole `ImageHumanParsingPipeline` call on an RGB PIL image

ModelScope's M2FP import path needs three packages that cannot be installed here; small
stand-ins go into `sys.modules` before ModelScope is imported:
- mmcv: `ms_deform_attn.py` imports mmcv's compiled op and its pure-PyTorch CPU fallback
  `multi_scale_deformable_attn_pytorch` at import time. The compiled op's stand-in raises, so
  ModelScope takes its own CPU fallback path; the fallback is this repository's reference
  `ms_deform_attn` (m2fp/modeling/deform_attn.py, loaded by file path): the same
  grid_sample-per-level, stack, weight and sum that mmcv's function does, tested against a
  naive per-point loop.
- timm: only ModelScope's Swin backbone (imported for `ImageList`, never built for M2FP)
  takes DropPath, to_2tuple and trunc_normal_ from it.
- torchvision: the pipeline's `T.Compose([T.Resize((h, w)), T.ToTensor()])` on a PIL image,
  i.e. `PIL.Image.resize((w, h), BILINEAR)` and a (C, H, W) float tensor / 255; and a
  `torchvision.models.vgg` module that ddcolor's loss imports but M2FP never uses.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    peak_rss_mb,
    photo_like,
    random_batch,
    reset_peak_rss,
    serve,
    timed,
    window_peak_mb,
)


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def install_stand_ins() -> None:
    """Put the mmcv, timm and torchvision stand-ins described above into sys.modules."""
    spec = importlib.util.spec_from_file_location(
        "_m2fp_reference_deform_attn", REPO / "m2fp" / "modeling" / "deform_attn.py"
    )
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)

    class MultiScaleDeformableAttnFunction:
        @staticmethod
        def apply(*args: Any) -> torch.Tensor:
            raise NotImplementedError("mmcv's compiled op is not installed (CPU fallback)")

    _module("mmcv")
    _module("mmcv.ops")
    msda = _module("mmcv.ops.multi_scale_deform_attn")
    msda.MultiScaleDeformableAttnFunction = MultiScaleDeformableAttnFunction
    msda.multi_scale_deformable_attn_pytorch = reference.ms_deform_attn

    _module("timm")
    _module("timm.models")
    layers = _module("timm.models.layers")

    class DropPath(torch.nn.Module):  # identity at inference, which is all that runs here
        def __init__(self, drop_prob: float = 0.0) -> None:
            super().__init__()
            self.drop_prob = drop_prob

    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = torch.nn.init.trunc_normal_

    _module("torchvision")
    _module("torchvision.models")
    _module("torchvision.models.vgg")
    transforms = _module("torchvision.transforms")

    class Compose:
        def __init__(self, steps: list) -> None:
            self.steps = steps

        def __call__(self, x: Any) -> Any:
            for step in self.steps:
                x = step(x)
            return x

    class Resize:
        def __init__(self, size: tuple[int, int]) -> None:
            self.size = size  # (h, w)

        def __call__(self, image: Any) -> Any:
            from PIL import Image

            h, w = self.size
            return image.resize((w, h), Image.Resampling.BILINEAR)

    class ToTensor:
        def __call__(self, image: Any) -> torch.Tensor:
            array = np.array(image, np.uint8, copy=True)
            return torch.from_numpy(array).permute(2, 0, 1).contiguous().float().div(255)

    transforms.Compose, transforms.Resize, transforms.ToTensor = Compose, Resize, ToTensor


class ModelScopeWorker:
    def __init__(self, args: argparse.Namespace) -> None:
        torch.set_num_threads(args.threads)
        install_stand_ins()
        from modelscope.models import Model

        self.model = Model.from_pretrained(args.model_dir).eval()
        self._pipeline = None

    def hello(self) -> dict[str, Any]:
        import modelscope

        return {
            "impl": f"modelscope-{modelscope.__version__}",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }

    def _measure(self, fn, warmup: int, repeats: int) -> tuple[dict[str, Any], Any]:
        result = None
        for _ in range(warmup):
            result = fn()
        reset_peak_rss()
        seconds = []
        for _ in range(repeats):
            dt, result = timed(fn)
            seconds.append(dt)
        stats = {
            "seconds": seconds,
            "window_peak_rss_mb": window_peak_mb(),
            "process_peak_rss_mb": peak_rss_mb(),
            "cuda_peak_mb": None,
        }
        return stats, result

    def forward(self, req: dict[str, Any]) -> dict[str, Any]:
        batch = random_batch(req["batch"], req["height"], req["width"], req.get("seed", 0))
        inputs = {
            "batched_inputs": [
                {"image": torch.from_numpy(img).float(), "height": img.shape[1],
                 "width": img.shape[2]}
                for img in batch
            ]
        }  # fmt: skip

        def run() -> dict[str, Any]:
            with torch.no_grad():  # as the pipeline calls it
                return self.model.forward(inputs)["outputs"]  # __call__ adds postprocess

        stats, out = self._measure(run, req.get("warmup", 1), req.get("repeats", 1))
        if req.get("save") and out is not None:
            np.savez(
                req["save"],
                class_logits=out["pred_logits"].numpy(),
                mask_logits=out["pred_masks"].numpy(),
            )
        return stats

    def pipeline(self, req: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        if self._pipeline is None:
            from modelscope.pipelines.cv.image_human_parsing_pipeline import (
                ImageHumanParsingPipeline,
            )

            self._pipeline = ImageHumanParsingPipeline(model=self.model)
        image = Image.fromarray(photo_like(req["height"], req["width"], req.get("seed", 0)))
        stats, result = self._measure(
            lambda: self._pipeline(image), req.get("warmup", 1), req.get("repeats", 1)
        )
        if req.get("save") and result is not None:
            names = list(self.model.classes)
            masks = result["masks"]
            np.savez_compressed(
                req["save"],
                labels=np.array([names.index(n) for n in result["labels"]], dtype=np.int64),
                scores=np.array(result["scores"], dtype=np.float64),
                masks=(
                    np.stack([m > 0 for m in masks])
                    if masks
                    else np.zeros((0, req["height"], req["width"]), bool)
                ),
            )
        stats["instances"] = len(result["labels"]) if result is not None else None
        return stats

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        if req["op"] == "forward":
            return self.forward(req)
        if req["op"] == "pipeline":
            return self.pipeline(req)
        raise ValueError(f"unknown op {req['op']!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description="ModelScope benchmark worker")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--threads", type=int, default=2)
    worker = ModelScopeWorker(parser.parse_args())
    serve(worker.hello(), worker.handle)


if __name__ == "__main__":
    main()
