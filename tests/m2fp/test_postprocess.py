"""Post-processing: against ModelScope's stored outputs (tiny reference), against the plain full
computation it replaces (every top-k mask at full size), persons, and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m2fp.postprocess import (
    ImageParsing,
    mask_bboxes,
    postprocess_image,
    select_candidates,
    upsample_mask_logits,
)
from tests.support.paths import TINY_REFERENCE

CASES = torch.load(TINY_REFERENCE / "cases.pt", weights_only=True)["cases"]
TINY_BUDGET = 1  # too small to keep any map: every one is resized again when needed


def _case(name: str) -> dict:
    return next(c for c in CASES if c["name"] == name)


def full_postprocess(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    padded_hw: tuple[int, int],
    resized_hw: tuple[int, int],
    output_hw: tuple[int, int],
    thr: float = 0.3,
) -> tuple[list[tuple[int, float, torch.Tensor]], torch.Tensor]:
    """The straightforward computation, as ModelScope's M2FP.postprocess does it: every one of
    the top-100 masks resized to full size, 20 stacked class maps, argmax. Test oracle."""
    masks = F.interpolate(mask_logits[None], size=padded_hw, mode="bilinear", align_corners=False)
    masks = masks[..., : resized_hw[0], : resized_hw[1]]
    masks = F.interpolate(masks, size=output_hw, mode="bilinear", align_corners=False)[0]
    probs = F.softmax(class_logits, dim=-1)[:, :-1]
    k = probs.shape[1]
    top, idx = probs.flatten().topk(min(100, probs.numel()), sorted=False)
    labels, masks = idx % k, masks[idx // k]
    positive = (masks > 0).float()
    mean = (masks.sigmoid().flatten(1) * positive.flatten(1)).sum(1) / (
        positive.flatten(1).sum(1) + 1e-6
    )
    scores = top * mean
    instances = []
    for i in range(len(labels)):
        c, s = int(labels[i]), float(scores[i])
        if (0 < c < 20 and s >= 0.1) or (c == 20 and s > 0.1):
            instances.append((c, s, masks[i] > 0))
    class_maps = []
    for c in range(20):
        total = torch.zeros(output_hw)
        times = torch.zeros(output_hw)
        for i in torch.where(labels == c)[0][scores[labels == c].argsort()]:
            if scores[i] < thr:
                continue
            value = masks[i].sigmoid() * scores[i]
            total = torch.where(value > 0.5, value + total, total)
            times += (value > 0.5).float()
        class_maps.append(total / torch.where(times == 0, 1.0, times))
    return instances, torch.stack(class_maps).argmax(0).to(torch.uint8)


def _sorted_instances(parsed: ImageParsing) -> list[tuple[int, float, torch.Tensor]]:
    items = [(i.category_id, i.score, parsed.query_masks[i.mask_row]) for i in parsed.instances]
    return sorted(items, key=lambda t: (t[0], t[1]))


def _fragile_mask(case: dict, query: int) -> np.ndarray:
    fragile = np.zeros((case["height"], case["width"]), dtype=bool)
    for q, y, x in case["margins"]["mask_fragile_qyx"].tolist():
        if q == query:
            fragile[y, x] = True
    return fragile


@pytest.mark.parametrize("budget", [512 << 20, TINY_BUDGET], ids=["kept", "recomputed"])
@pytest.mark.parametrize("name", [c["name"] for c in CASES])
def test_stored_logits_give_modelscope_outputs(name: str, budget: int) -> None:
    case = _case(name)
    hw = (case["height"], case["width"])
    parsed = postprocess_image(
        case["pred_logits"][0],
        case["pred_masks"][0],
        padded_hw=case["padded_hw"],
        resized_hw=hw,
        output_hw=hw,
        memory_budget=budget,
    )
    reference = sorted(
        case["part_outputs"] + case["human_outputs"], key=lambda o: (o["category_id"], o["score"])
    )
    ours = _sorted_instances(parsed)
    assert [c for c, _, _ in ours] == [o["category_id"] for o in reference]
    for (_, score, mask), ref in zip(ours, reference, strict=True):
        assert score == pytest.approx(ref["score"], abs=1e-5)
        differ = mask.numpy() != ref["mask"].numpy()
        assert not (differ & ~_fragile_mask(case, ref["query"])).any()
    parts = parsed.instances[: parsed.num_parts]
    assert all(0 < i.category_id < 20 for i in parts)
    assert all(i.category_id == 20 for i in parsed.humans)
    fragile = np.zeros(hw, dtype=bool)
    fragile[tuple(case["margins"]["semantic_fragile_yx"].T.tolist())] = True
    differ = parsed.semantic.numpy() != case["semantic_map"].numpy()
    assert not (differ & ~fragile).any()
    assert parsed.semantic.dtype == torch.uint8 and parsed.semantic.shape == hw


def _synthetic(seed: int, queries: int, padded_hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Confident random logits: a few classes per query, smooth masks with real edges."""
    g = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(queries, 22, generator=g) * 4
    class_logits[:, 20] += 2.0  # some humans
    low = torch.randn(queries, 1, padded_hw[0] // 32, padded_hw[1] // 32, generator=g) * 6
    mask_logits = F.interpolate(low, size=(padded_hw[0] // 4, padded_hw[1] // 4), mode="bilinear")
    return class_logits, mask_logits[:, 0]


SIZES = [
    # padded, resized, original
    ((64, 96), (61, 83), (61, 83)),  # native: no resize
    ((160, 224), (160, 218), (61, 83)),  # the pipeline enlarged a small image
    ((192, 128), (181, 128), (272, 192)),  # the original is larger than the model input
    ((128, 192), (128, 188), (100, 147)),
]


@pytest.mark.parametrize("budget", [512 << 20, TINY_BUDGET], ids=["kept", "recomputed"])
@pytest.mark.parametrize(("padded", "resized", "original"), SIZES)
def test_equals_the_full_computation(
    padded: tuple[int, int], resized: tuple[int, int], original: tuple[int, int], budget: int
) -> None:
    """Both paths: the probability maps kept from scoring, or (a budget too small to keep
    them) resized again for the semantic map and the persons."""
    class_logits, mask_logits = _synthetic(sum(original), 40, padded)
    parsed = postprocess_image(
        class_logits,
        mask_logits,
        padded_hw=padded,
        resized_hw=resized,
        output_hw=original,
        memory_budget=budget,
    )
    instances, semantic = full_postprocess(class_logits, mask_logits, padded, resized, original)
    ours = _sorted_instances(parsed)
    reference = sorted(instances, key=lambda t: (t[0], t[1]))
    assert len(ours) > 10 and len(parsed.humans) >= 2  # the case exercises something
    assert [c for c, _, _ in ours] == [c for c, _, _ in reference]
    for (_, score, mask), (_, ref_score, ref_mask) in zip(ours, reference, strict=True):
        assert score == pytest.approx(ref_score, rel=1e-6)
        assert torch.equal(mask, ref_mask)
    assert torch.equal(parsed.semantic, semantic)
    assert len(torch.unique(semantic)) >= 3


def test_instances_come_parts_then_humans_by_descending_score() -> None:
    class_logits, mask_logits = _synthetic(1, 40, (128, 128))
    parsed = postprocess_image(
        class_logits, mask_logits, padded_hw=(128, 128), resized_hw=(128, 128), output_hw=(96, 96)
    )
    parts, humans = parsed.instances[: parsed.num_parts], parsed.humans
    assert parts and humans
    assert [i.score for i in parts] == sorted((i.score for i in parts), reverse=True)
    assert [i.score for i in humans] == sorted((i.score for i in humans), reverse=True)
    assert all(i.score >= 0.1 for i in parts) and all(i.score > 0.1 for i in humans)


def test_candidates_are_topk_pairs_above_the_threshold() -> None:
    logits = torch.full((30, 22), -10.0)
    logits[:, 21] = 10.0  # no-object everywhere ...
    logits[3, 5] = logits[3, 21] = 10.0  # ... except query 3: class 5 at p ~ 0.5
    logits[7, 20] = 12.0  # query 7: human at p ~ 0.88
    cand = select_candidates(logits, min_prob=0.1)
    assert sorted(zip(cand.queries, cand.labels, strict=True)) == [(3, 5), (7, 20)]
    assert torch.all(cand.probs >= 0.1)
    # only the top-k pairs compete: with k=1 the weaker pair is gone
    assert select_candidates(logits, topk=1, min_prob=0.1).labels == [20]


def test_nothing_found_gives_background() -> None:
    logits = torch.zeros(10, 22)
    logits[:, 21] = 20.0
    parsed = postprocess_image(
        logits, torch.randn(10, 8, 8), padded_hw=(32, 32), resized_hw=(30, 31), output_hw=(45, 47)
    )
    assert parsed.instances == [] and parsed.num_parts == 0
    assert parsed.semantic.shape == (45, 47) and not parsed.semantic.any()
    assert parsed.person_masks.shape == (0, 45, 47) and parsed.person_parts.shape == (0, 20)


def _two_people(score_a: float, score_b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two human queries whose masks overlap in the middle columns, and a face query over
    both; the mask logits rise toward each person's own side."""
    h, w = 16, 24  # stride-4 grid of a 64x96 input
    class_logits = torch.full((3, 22), -20.0)
    # probability p of the class: logit log(p / (1 - p)) against a no-object logit of 0
    for q, (label, p) in enumerate([(20, score_a), (20, score_b), (13, 0.9)]):
        class_logits[q, 21] = 0.0
        class_logits[q, label] = float(np.log(p / (1 - p)))
    x = torch.arange(w, dtype=torch.float32)
    mask_logits = torch.empty(3, h, w)
    mask_logits[0] = (14.0 - x).expand(h, w)  # person A: columns < 14
    mask_logits[1] = (x - 8.0).expand(h, w)  # person B: columns > 8
    mask_logits[2] = 5.0  # face everywhere
    return class_logits, mask_logits


def test_overlapping_persons_are_disjoint_and_parts_not_double_counted() -> None:
    class_logits, mask_logits = _two_people(0.95, 0.9)
    parsed = postprocess_image(
        class_logits, mask_logits, padded_hw=(64, 96), resized_hw=(64, 96), output_hw=(64, 96)
    )
    humans = parsed.humans
    assert len(humans) == 2 and humans[0].score > humans[1].score
    a, b = (parsed.query_masks[h.mask_row] for h in humans)
    assert (a & b).any()  # the instance masks overlap ...
    pa, pb = parsed.person_masks
    assert not (pa & pb).any()  # ... the persons do not
    assert torch.equal(pa | pb, a | b)
    assert (pa <= a).all() and (pb <= b).all()
    # in the overlap each pixel goes to the higher sigmoid(mask) * score
    probs = upsample_mask_logits(
        mask_logits[:2], padded_hw=(64, 96), resized_hw=(64, 96), output_hw=(64, 96)
    ).sigmoid()
    value_a, value_b = probs[0] * humans[0].score, probs[1] * humans[1].score
    overlap = a & b
    assert torch.equal(pa[overlap], (value_a >= value_b)[overlap])
    # parts: semantic pixels inside each person, summing to at most the semantic total
    for person, mask in zip(parsed.person_parts, parsed.person_masks, strict=True):
        expected = torch.bincount(parsed.semantic[mask].long(), minlength=20)
        assert torch.equal(person, expected)
    total = torch.bincount(parsed.semantic.flatten().long(), minlength=20)
    assert (parsed.person_parts.sum(0) <= total).all()
    assert parsed.person_parts[:, 13].sum() == (parsed.semantic == 13).sum()  # face in both


def test_person_fully_covered_by_a_stronger_one_owns_nothing() -> None:
    class_logits, mask_logits = _two_people(0.95, 0.5)
    mask_logits[1] = mask_logits[0] - 1.0  # B inside A, everywhere less likely
    parsed = postprocess_image(
        class_logits, mask_logits, padded_hw=(64, 96), resized_hw=(64, 96), output_hw=(64, 96)
    )
    assert len(parsed.humans) == 2
    assert parsed.person_masks[0].any() and not parsed.person_masks[1].any()
    assert parsed.person_parts[1].sum() == 0


def test_mask_bboxes() -> None:
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 9, 11] = True
    assert mask_bboxes(masks) == [(3, 2, 6, 3), (11, 9, 1, 1), (0, 0, 0, 0)]
