"""`Parser`: numpy image in, `ParsingResult` out (semantic map, instances, persons).

`prepare` (resize, CPU) and `run` (forward + post-processing on the model's device) are the two
halves the engine composes: request threads prepare, the batch thread runs. Images whose padded
sizes match share a forward; the others get their own, so every result is the one a single
`parse` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from m2fp.build import load_model
from m2fp.labels import HUMAN_CLASS_ID, NUM_CLASSES
from m2fp.modeling.m2fp import M2FP
from m2fp.postprocess import DEFAULT_MEMORY_BUDGET, ImageParsing, mask_bboxes, postprocess_image
from m2fp.transforms import MAX_SIZE, SHORT_EDGE, check_image, preprocess_shape, resize_image


@dataclass(frozen=True)
class Instance:
    """One instance as ModelScope's pipeline returns it.

    Attributes:
        category_id: 1..19 for a part, 20 (`HUMAN_CLASS_ID`) for a whole person.
        score: class probability × mean mask probability inside the mask.
        mask: bool (H, W) at the original image size (mask logit > 0). Instances of the same
            decoder query share one array; treat it as read-only.
    """

    category_id: int
    score: float
    mask: np.ndarray


@dataclass(frozen=True)
class Person:
    """One person: a human instance with the parts that belong to it.

    Attributes:
        id: 1..N in descending score order.
        score: the human instance's score.
        bbox: (x, y, w, h) of `mask`, COCO convention, original pixel space.
        mask: bool (H, W), the pixels this person owns. Persons never overlap: a pixel inside
            several human masks belongs to the one with the highest mask probability × score
            there (ties: the higher score), so `mask` can be smaller than the human instance's.
        parts: class id 1..19 → pixels of `ParsingResult.semantic` with that class inside
            `mask`; classes absent from the person are not listed. Summed over persons, a class
            never counts more pixels than the semantic map holds.
    """

    id: int
    score: float
    bbox: tuple[int, int, int, int]
    mask: np.ndarray
    parts: dict[int, int]

    @property
    def area(self) -> int:
        """Pixels of `mask`."""
        return int(np.count_nonzero(self.mask))


@dataclass(frozen=True)
class ParsingResult:
    """Everything found in one image, at its original size.

    Attributes:
        semantic: uint8 (H, W) class ids 0..19 (argmax over the pasted class maps).
        instances: parts (descending score) then humans (descending score), as the pipeline.
        persons: one per human instance that owns at least one pixel, ids 1..N.
    """

    semantic: np.ndarray
    instances: list[Instance]
    persons: list[Person]

    @property
    def height(self) -> int:
        return int(self.semantic.shape[0])

    @property
    def width(self) -> int:
        return int(self.semantic.shape[1])


@dataclass(frozen=True)
class PreparedImage:
    """An image made ready for the model on the CPU (what `Parser.prepare` returns).

    Attributes:
        pixels: uint8 (h, w, 3) RGB, resized as the pipeline does.
        original_hw: the size results are returned at.
        padded_hw: the model's input size for it (multiple of the model's divisibility).
    """

    pixels: np.ndarray
    original_hw: tuple[int, int]
    padded_hw: tuple[int, int]

    @property
    def resized_hw(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


class Parser:
    """Human parsing with an M2FP model, as ModelScope's pipeline does it, plus persons.

    Args:
        model: a loaded model, or a ModelScope-style model directory to load.
        device: where to run; None keeps a loaded model's device (CPU for a directory).
        dtype: the model's float type; None keeps a loaded model's (float32 for a directory).
            A loaded model is moved/cast in place when `device`/`dtype` ask for it.
        short_edge, max_size: the pipeline's resize (640, 1333); `short_edge=None` feeds
            images at their own size.
        batch_size: most images per forward in `parse_batch`.
        weights: a file object with the checkpoint, when `model` is a directory whose weights
            come from elsewhere (e.g. decrypted in memory).
        memory_budget: bytes of full-size float maps the post-processing works with (see
            `m2fp.postprocess.postprocess_image`); lower it for very large images.
    """

    def __init__(
        self,
        model: M2FP | str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        short_edge: int | None = SHORT_EDGE,
        max_size: int = MAX_SIZE,
        batch_size: int = 4,
        weights: BinaryIO | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        if isinstance(model, str | Path):
            model = load_model(model, device=device or "cpu", weights=weights)
        elif weights is not None:
            raise ValueError("weights= is only used when model is a model directory")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        self.model = model.eval()
        self.short_edge = short_edge
        self.max_size = max_size
        self.batch_size = batch_size
        self.memory_budget = memory_budget
        cfg = getattr(model, "config", None)
        self.num_parsing = cfg.num_parsing if cfg is not None else NUM_CLASSES
        self.semantic_score_thr = cfg.parsing_ins_score_thr if cfg is not None else 0.3
        self.size_divisibility = model.size_divisibility
        if self.num_parsing != NUM_CLASSES or (
            cfg and cfg.decoder.num_classes != HUMAN_CLASS_ID + 1
        ):
            raise ValueError("Parser expects the CIHP classes: 20 parsing classes + Human")

    @property
    def device(self) -> torch.device:
        return self.model.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.pixel_mean.dtype

    def prepare(self, image: np.ndarray | Image.Image) -> PreparedImage:
        """Resize one (H, W, 3) uint8 RGB image as the pipeline does (CPU work only).

        A PIL image is converted to RGB first.

        Raises:
            TypeError, ValueError: not an (H, W, 3) uint8 array.
        """
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        image = check_image(image)
        height, width = image.shape[:2]
        resized = image
        if self.short_edge is not None:
            size = preprocess_shape(
                height, width, short_edge=self.short_edge, max_size=self.max_size
            )
            resized = resize_image(image, size)
        if resized is image:  # own the pixels: the caller may reuse its array meanwhile
            resized = image.copy()
        image = resized
        d = self.size_divisibility
        h, w = image.shape[:2]
        padded = (-(-h // d) * d, -(-w // d) * d)
        return PreparedImage(pixels=image, original_hw=(height, width), padded_hw=padded)

    def run(self, prepared: Sequence[PreparedImage]) -> list[ParsingResult]:
        """Forward and post-process prepared images, one forward per padded size (all of them
        in one batch: the caller bounds the batch), results in input order."""
        results: list[ParsingResult | None] = [None] * len(prepared)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault(p.padded_hw, []).append(i)
        with torch.inference_mode():
            for padded_hw, members in groups.items():
                batch = self._batch([prepared[i] for i in members], padded_hw)
                out = self.model(batch)
                for k, i in enumerate(members):
                    p = prepared[i]
                    parsed = postprocess_image(
                        out.class_logits[k],
                        out.mask_logits[k],
                        padded_hw=out.padded_hw,
                        resized_hw=p.resized_hw,
                        output_hw=p.original_hw,
                        num_parsing=self.num_parsing,
                        semantic_score_thr=self.semantic_score_thr,
                        memory_budget=self.memory_budget,
                    )
                    results[i] = _to_result(parsed)
        return results

    def parse(self, image: np.ndarray | Image.Image) -> ParsingResult:
        """Parse one (H, W, 3) uint8 RGB image."""
        return self.run([self.prepare(image)])[0]

    def parse_batch(self, images: Sequence[np.ndarray | Image.Image]) -> list[ParsingResult]:
        """Parse several images: each padded size in forwards of at most `batch_size` images.
        Every result equals `parse` of that image (to float rounding of batched kernels)."""
        prepared = [self.prepare(image) for image in images]
        order = sorted(range(len(prepared)), key=lambda i: prepared[i].padded_hw)
        results: list[ParsingResult | None] = [None] * len(prepared)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, result in zip(chunk, self.run([prepared[i] for i in chunk]), strict=True):
                results[i] = result
        return results

    def _batch(self, prepared: Sequence[PreparedImage], padded_hw: tuple[int, int]) -> torch.Tensor:
        """float32 (B, 3, Hp, Wp) on the model's device. Images smaller than the padded size
        are padded with the pixel mean, which the model normalises to exactly 0: its own
        zero padding, so a batched image sees the input it would see alone."""
        device = self.device
        mean = self.model.pixel_mean.to(device=device, dtype=torch.float32).view(3, 1, 1)
        batch = torch.empty((len(prepared), 3, *padded_hw), dtype=torch.float32, device=device)
        for k, p in enumerate(prepared):
            h, w = p.resized_hw
            pixels = torch.from_numpy(p.pixels).to(device).permute(2, 0, 1)
            batch[k, :, :h, :w] = pixels
            batch[k, :, h:, :] = mean
            batch[k, :, :h, w:] = mean
        return batch


def _to_result(parsed: ImageParsing) -> ParsingResult:
    """Device tensors → the numpy result (masks are copied to the host once, not per instance)."""
    query_masks = parsed.query_masks.cpu().numpy()
    instances = [
        Instance(category_id=i.category_id, score=i.score, mask=query_masks[i.mask_row])
        for i in parsed.instances
    ]
    person_masks = parsed.person_masks.cpu().numpy()
    boxes = mask_bboxes(parsed.person_masks)
    counts = parsed.person_parts.cpu().tolist()
    persons = []
    for human, mask, box, row in zip(parsed.humans, person_masks, boxes, counts, strict=True):
        if box[2] == 0:  # every pixel of it belongs to a more likely person
            continue
        parts = {c: n for c, n in enumerate(row) if c > 0 and n > 0}
        persons.append(Person(len(persons) + 1, human.score, box, mask, parts))
    return ParsingResult(parsed.semantic.cpu().numpy(), instances, persons)
