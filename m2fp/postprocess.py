"""ModelScope's M2FP post-processing as tensor functions, lean at large output sizes.

Reproduces `M2FP.postprocess` → `instance_parsing_inference` → the pipeline's `postprocess`
(multi-human model, `parsing_on`):

1. mask logits are resized bilinearly (align_corners False) from stride 4 to the padded input,
   cropped to the resized image, then resized to the original size;
2. class probabilities are `softmax(logits)` without the no-object column; the top 100
   (query, class) pairs are kept;
3. score = class probability × mean(sigmoid(mask) over mask > 0);
4. parts are classes 1..19 with score ≥ 0.1, humans class 20 with score > 0.1, each with the
   mask `logit > 0`;
5. the semantic map is the argmax over 20 class maps (ties: lowest id), where class c's map
   averages `sigmoid(mask) · score` over its instances with score ≥ `parsing_ins_score_thr`,
   counting only pixels where that value is > 0.5 (0 where none is).

The full computation resizes all 100 top-k masks to the original size: 100 float maps (4.8 GB
for a 12 MP photo). Since the mask score is a mean of sigmoids (≤ 1), score ≤ class probability:
a pair whose probability is below every threshold can never contribute. So candidates are
selected from the probabilities first, each distinct query is resized on its own into a reused
buffer, and only reductions, the bool masks, the few running maps and (when they fit in
`memory_budget`) the candidates' probability maps are kept.
The results are those of the full computation: the same float operations on the same values.

Everything runs on the device of the logits; the host waits for the device twice per image
(after the candidate selection and after the scores), never inside a loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

TOPK_PER_IMAGE = 100  # ModelScope's hard-coded test_topk_per_image
PART_SCORE_THR = 0.1  # parts are kept when score >= 0.1
HUMAN_SCORE_THR = 0.1  # humans are kept when score > 0.1
DEFAULT_MEMORY_BUDGET = 512 << 20  # bytes of full-size float maps (see postprocess_image)
_KEPT_BYTES_PER_PIXEL = 4  # a probability map kept for reuse


@dataclass(frozen=True)
class InstanceRef:
    """One output instance: its class, score and row of `ImageParsing.query_masks`."""

    category_id: int
    score: float
    mask_row: int


@dataclass
class ImageParsing:
    """Post-processed tensors of one image, on the logits' device.

    Attributes:
        semantic: uint8 (H, W) class ids 0..num_parsing-1.
        query_masks: bool (U, H, W) `mask logit > 0` of each distinct candidate query; several
            instances (a query predicting two classes) may share a row.
        instances: parts (descending score) then humans (descending score).
        num_parts: how many of `instances` are parts.
        person_masks: bool (P, H, W), disjoint: person p (the p-th human instance) owns the
            pixels of its mask where its `sigmoid(mask) · score` is the highest of all humans.
        person_parts: int64 (P, num_parsing) semantic pixels of each class inside each person.
    """

    semantic: torch.Tensor
    query_masks: torch.Tensor
    instances: list[InstanceRef]
    num_parts: int
    person_masks: torch.Tensor
    person_parts: torch.Tensor

    @property
    def humans(self) -> list[InstanceRef]:
        """The human instances, person p being `humans[p - 1]`."""
        return self.instances[self.num_parts :]


@dataclass(frozen=True)
class Candidates:
    """Top-k (query, class) pairs whose probability can reach a threshold (host lists) and
    their probabilities (float32 tensor on the logits' device)."""

    queries: list[int]
    labels: list[int]
    probs: torch.Tensor

    def __len__(self) -> int:
        return len(self.queries)


def class_probabilities(class_logits: torch.Tensor) -> torch.Tensor:
    """(Q, K+1) logits → float32 (Q, K) softmax probabilities without the no-object class."""
    return F.softmax(class_logits.float(), dim=-1)[:, :-1]


def select_candidates(
    class_logits: torch.Tensor, *, topk: int = TOPK_PER_IMAGE, min_prob: float = 0.1
) -> Candidates:
    """The top-`topk` (query, class) pairs by probability, keeping those ≥ `min_prob`.

    Args:
        class_logits: (Q, K+1) logits of one image.
        topk: pairs kept before thresholding, as ModelScope (`torch.topk` over Q·K).
        min_prob: the lowest score threshold any later step applies.
    """
    probs = class_probabilities(class_logits)
    num_classes = probs.shape[1]
    flat = probs.flatten()
    values, index = flat.topk(min(topk, flat.numel()), sorted=False)
    values, index = values.cpu(), index.cpu()  # the one wait for the device before scoring
    keep = values >= min_prob
    index = index[keep].tolist()
    return Candidates(
        queries=[i // num_classes for i in index],
        labels=[i % num_classes for i in index],
        probs=values[keep].to(class_logits.device),
    )


def upsample_mask_logits(
    mask_logits: torch.Tensor,
    *,
    padded_hw: tuple[int, int],
    resized_hw: tuple[int, int],
    output_hw: tuple[int, int],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, Hp/4, Wp/4) stride-4 logits → float32 (n, H, W) at the original size.

    Bilinear (align_corners False) to the padded size, crop to the resized image, bilinear to
    the original size: ModelScope's two steps, each plane independently. `out`, a float32
    (n, H, W) tensor, receives the result without a new full-size allocation (same kernel).
    """
    x = F.interpolate(
        mask_logits.float()[None], size=padded_hw, mode="bilinear", align_corners=False
    )
    x = x[..., : resized_hw[0], : resized_hw[1]]
    if out is None:
        return F.interpolate(x, size=output_hw, mode="bilinear", align_corners=False)[0]
    torch.ops.aten.upsample_bilinear2d.out(x, list(output_hw), False, None, None, out=out[None])
    return out


def postprocess_image(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    *,
    padded_hw: tuple[int, int],
    resized_hw: tuple[int, int],
    output_hw: tuple[int, int],
    num_parsing: int = 20,
    semantic_score_thr: float = 0.3,
    topk: int = TOPK_PER_IMAGE,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> ImageParsing:
    """Instances, semantic map and persons of one image from the model's raw outputs.

    Args:
        class_logits: (Q, K+1) logits; class `num_parsing` is Human, K is no-object.
        mask_logits: (Q, Hp/4, Wp/4) mask logits at stride 4 of the padded input.
        padded_hw: the padded input size (multiple of 32).
        resized_hw: the resized image inside it.
        output_hw: the original image size; every map is at this size.
        num_parsing: semantic classes (0..num_parsing-1); Human is class `num_parsing`.
        semantic_score_thr: the model's `parsing_ins_score_thr`.
        topk: (query, class) pairs considered, 100 as ModelScope.
        memory_budget: bytes of full-size probability maps that may be kept: when the
            candidates' maps all fit, each query is resized once; otherwise they are resized
            again for the semantic map and persons (slower, but memory stays a few maps).
    """
    min_prob = min(PART_SCORE_THR, HUMAN_SCORE_THR, semantic_score_thr)
    cand = select_candidates(class_logits, topk=topk, min_prob=min_prob)
    queries = sorted(set(cand.queries))
    row_of = {q: i for i, q in enumerate(queries)}
    rows = [row_of[q] for q in cand.queries]  # candidate → its query's row
    maps = _QueryMaps(mask_logits, padded_hw, resized_hw, output_hw, queries, memory_budget)
    rows_dev = torch.tensor(rows, dtype=torch.long).to(mask_logits.device)

    query_masks, mean_sigmoid = maps.score_all()
    scores = cand.probs * mean_sigmoid[rows_dev]
    host = scores.cpu().tolist()  # the second and last wait for the device

    labels = cand.labels
    parts = [j for j, c in enumerate(labels) if 0 < c < num_parsing and host[j] >= PART_SCORE_THR]
    humans = [j for j, c in enumerate(labels) if c == num_parsing and host[j] > HUMAN_SCORE_THR]
    parts.sort(key=lambda j: -host[j])
    humans.sort(key=lambda j: -host[j])
    instances = [InstanceRef(labels[j], host[j], rows[j]) for j in parts + humans]
    pasted: dict[int, list[int]] = {}  # class → its instances in the semantic map
    for j in sorted(range(len(cand)), key=lambda j: host[j]):  # ascending: ModelScope's order
        if labels[j] < num_parsing and host[j] >= semantic_score_thr:
            pasted.setdefault(labels[j], []).append(j)
    pasted = dict(sorted(pasted.items()))
    maps.plan([[rows[j] for j in js] for js in pasted.values()] + [[rows[j] for j in humans]])

    work = [torch.empty(output_hw, dtype=torch.float32, device=scores.device) for _ in range(6)]
    semantic = _semantic_map(list(pasted.items()), scores, maps, work)
    owner = _person_owner(humans, scores, rows, query_masks, maps, work)
    person_masks, person_parts = _persons(owner, semantic, len(humans), num_parsing)
    del work
    return ImageParsing(semantic, query_masks, instances, len(parts), person_masks, person_parts)


class _QueryMaps:
    """Resizes chosen queries' mask logits to the original size one at a time into reused
    buffers, keeping their probability maps for reuse when all of them fit in the budget.

    Row r is `queries[r]`. A fresh full-size tensor per query would cost its page faults on
    every use (large allocations go back to the system when freed): at 12 MP they were a
    third of the time, so every full-size map is written with `out=` into a buffer made once.
    """

    def __init__(
        self,
        mask_logits: torch.Tensor,
        padded_hw: tuple[int, int],
        resized_hw: tuple[int, int],
        output_hw: tuple[int, int],
        queries: list[int],
        memory_budget: int,
    ) -> None:
        self.mask_logits = mask_logits
        self.padded_hw, self.resized_hw, self.output_hw = padded_hw, resized_hw, output_hw
        self.queries = queries
        self.num_rows = len(queries)
        pixels = output_hw[0] * output_hw[1]
        self.keep = self.num_rows * _KEPT_BYTES_PER_PIXEL * pixels <= memory_budget
        device = mask_logits.device
        self.kept = torch.empty((self.num_rows if self.keep else 0, *output_hw), device=device)
        self.buffer = torch.empty(output_hw, dtype=torch.float32, device=device)
        self._planned: list[list[int]] = []

    def _logits(self, row: int, out: torch.Tensor) -> torch.Tensor:
        """Row `row`'s logits at the original size, written into `out` (H, W)."""
        upsample_mask_logits(
            self.mask_logits[self.queries[row]][None],
            padded_hw=self.padded_hw,
            resized_hw=self.resized_hw,
            output_hw=self.output_hw,
            out=out[None],
        )
        return out

    def score_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """bool (U, H, W) `logit > 0` and float32 (U,) mean sigmoid over it, for every row."""
        n = self.num_rows
        device = self.mask_logits.device
        positive = torch.empty((n, *self.output_hw), dtype=torch.bool, device=device)
        mean = torch.empty(n, dtype=torch.float32, device=device)
        hits = torch.empty(self.output_hw, dtype=torch.float32, device=device)
        for row in range(n):
            logits = self._logits(row, self.buffer)
            torch.gt(logits, 0.0, out=positive[row])
            # float arithmetic for the sums (bool operands take slow CPU paths): 1 where > 0
            torch.clamp(logits, min=0.0, out=hits).sign_()
            count = hits.sum()
            probs = torch.sigmoid(logits, out=self.kept[row] if self.keep else logits)
            num = hits.mul_(probs).sum()
            mean[row] = num / (count + 1e-6)  # ModelScope's formula and float32 sums
        return positive, mean

    def plan(self, sequences: list[list[int]]) -> None:
        """Declare the row sequences `probabilities` will be asked for, in that order."""
        self._planned = list(sequences)

    def probabilities(self) -> Iterator[torch.Tensor]:
        """The sigmoid (H, W) maps of the next planned sequence, one at a time, in order; a
        map recomputed into the shared buffer is valid until the next one is asked for."""
        for row in self._planned.pop(0):
            if self.keep:
                yield self.kept[row]
            else:
                yield self._logits(row, self.buffer).sigmoid_()


def _semantic_map(
    pasted: list[tuple[int, list[int]]],
    scores: torch.Tensor,
    maps: _QueryMaps,
    work: list[torch.Tensor],
) -> torch.Tensor:
    """uint8 (H, W) argmax over the class maps, built one class at a time: a running max and
    argmax replace the stacked maps (strict `>` keeps the lowest id on ties, as argmax does).

    Pure float arithmetic (bool masks and `where` are slow on the CPU), exact to the last bit:
    a pasted value is `threshold(sigmoid · score, 0.5, 0)`, a class map is the sum of its
    pasted values over their count, and since maps are 0 or near 0.5 and above, their
    differences never underflow: `sign(relu(map - best))` is exactly `map > best`.
    """
    best, label, total, times, value, step = work
    best.zero_()
    label.zero_()
    for c, order in pasted:
        class_map = None
        for k, (j, probs) in enumerate(zip(order, maps.probabilities(), strict=True)):
            torch.mul(probs, scores[j], out=value)
            F.threshold_(value, 0.5, 0.0)  # v if v > 0.5 else 0: ModelScope's paste
            if len(order) == 1:
                class_map = value
                break
            if k == 0:
                total.copy_(value)
                torch.sign(value, out=times)
            else:
                total.add_(value)
                times.add_(torch.sign(value, out=step))
        if class_map is None:
            class_map = total.div_(times.clamp_(min=1.0))
        if c == 0:
            best.copy_(class_map)
            continue
        # label = c where class_map > best; labels so far are < c, so a max does it
        torch.sub(class_map, best, out=step).relu_().sign_().mul_(c)
        torch.maximum(label, step, out=label)
        torch.maximum(best, class_map, out=best)
    return label.to(torch.uint8)


def _person_owner(
    humans: list[int],
    scores: torch.Tensor,
    rows: list[int],
    query_masks: torch.Tensor,
    maps: _QueryMaps,
    work: list[torch.Tensor],
) -> torch.Tensor:
    """float (H, W) map of person ids (1.. in `humans` order, 0 = nobody).

    A pixel inside several human masks goes to the human with the highest `sigmoid(mask) ·
    score` there (the value ModelScope pastes for the semantic map), ties to the higher score.
    """
    best, owner, value, step = work[:4]
    best.zero_()
    owner.zero_()
    for rank, (j, probs) in enumerate(zip(humans, maps.probabilities(), strict=True), 1):
        torch.mul(probs, scores[j], out=value)
        value.mul_(step.copy_(query_masks[rows[j]]))  # 0 outside the mask, > 0.05 inside
        # owner = rank where value > best: ranks so far are < rank, so a max does it
        torch.sub(value, best, out=step).relu_().sign_().mul_(rank)
        torch.maximum(owner, step, out=owner)
        torch.maximum(best, value, out=best)
    return owner


def _persons(
    owner: torch.Tensor, semantic: torch.Tensor, num_persons: int, num_parsing: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """bool (P, H, W) person masks and int64 (P, num_parsing) semantic pixel counts in each,
    from the float owner map."""
    ids = torch.arange(1, num_persons + 1, device=owner.device, dtype=owner.dtype)
    masks = owner[None] == ids[:, None, None]
    # (persons + 1) x classes bins; row 0 counts the pixels no person owns
    flat = owner.to(torch.int32).mul_(num_parsing).add_(semantic)
    counts = torch.bincount(flat.flatten(), minlength=(num_persons + 1) * num_parsing)
    return masks, counts.view(num_persons + 1, num_parsing)[1:]


def mask_bboxes(masks: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """COCO boxes (x, y, w, h) of (N, H, W) bool masks; (0, 0, 0, 0) for an empty mask."""
    rows = masks.any(dim=2).cpu().numpy()
    cols = masks.any(dim=1).cpu().numpy()
    boxes = []
    for r, c in zip(rows, cols, strict=True):
        if not r.any():
            boxes.append((0, 0, 0, 0))
            continue
        y0, y1 = int(np.argmax(r)), len(r) - 1 - int(np.argmax(r[::-1]))
        x0, x1 = int(np.argmax(c)), len(c) - 1 - int(np.argmax(c[::-1]))
        boxes.append((x0, y0, x1 - x0 + 1, y1 - y0 + 1))
    return boxes
