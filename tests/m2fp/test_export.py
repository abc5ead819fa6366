"""`m2fp.export.result_to_json`: the field names of docs/api.md, plain JSON, masks that decode."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as coco_mask
import pytest
from PIL import Image

from m2fp import render
from m2fp.export import result_to_json
from m2fp.parser import Parser, ParsingResult, Person

pytestmark = pytest.mark.filterwarnings(  # pycocotools' decode under numpy 2 (tests only)
    "ignore:__array__ implementation:DeprecationWarning"
)


def _person(pid: int, score: float, mask: np.ndarray, semantic: np.ndarray) -> Person:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = (x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1)
    ids, counts = np.unique(semantic[mask], return_counts=True)
    parts = {int(k): int(n) for k, n in zip(ids, counts, strict=True) if k != 0}
    return Person(id=pid, score=score, bbox=bbox, mask=mask, parts=parts)


@pytest.fixture
def sample() -> tuple[ParsingResult, np.ndarray]:
    h, w = 30, 44
    semantic = np.zeros((h, w), np.uint8)
    semantic[2:12, 3:10] = 2  # hair
    semantic[12:28, 3:12] = 5  # upper clothes
    semantic[5:25, 25:40] = 9  # pants
    semantic[20:25, 30:33] = 13
    left = np.zeros((h, w), bool)
    left[2:28, 2:13] = True
    right = np.zeros((h, w), bool)
    right[4:26, 24:41] = True
    persons = [
        _person(1, 0.97, left, semantic),
        _person(2, np.float32(0.51), right, semantic),  # numpy scalars must not leak out
    ]
    result = ParsingResult(semantic=semantic, instances=[], persons=persons)
    image = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return result, image


def _png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    assert image.format == "PNG"
    return image


def test_schema_and_plain_json(sample: tuple[ParsingResult, np.ndarray]) -> None:
    result, image = sample
    doc = result_to_json(result, image)
    assert list(doc) == ["image", "classes", "persons", "label_map"]
    assert doc["image"] == {"width": 44, "height": 30}
    assert json.loads(json.dumps(doc)) == doc  # plain types only, keys already strings
    assert doc["classes"] == render.class_stats(result.semantic)
    assert sum(c["pixels"] for c in doc["classes"]) == 30 * 44
    first, second = doc["persons"]
    assert list(first) == [
        "id", "score", "bbox", "area", "parts", "part_pixels", "part_areas", "mask"
    ]  # fmt: skip
    assert first["id"] == 1 and first["score"] == 0.97 and first["bbox"] == [2, 2, 11, 26]
    assert first["area"] == 26 * 11
    assert first["parts"] == [2, 5] and first["part_pixels"] == {"2": 70, "5": 144}
    assert second["parts"] == [9, 13] and type(second["score"]) is float
    assert doc["label_map"]["format"] == "png"
    label_map = _png(doc["label_map"]["data"])
    assert label_map.mode == "L"
    np.testing.assert_array_equal(np.asarray(label_map), result.semantic)


def test_rle_masks_decode_to_person_masks(sample: tuple[ParsingResult, np.ndarray]) -> None:
    result, image = sample
    doc = json.loads(json.dumps(result_to_json(result, image)))
    for person, out in zip(result.persons, doc["persons"], strict=True):
        mask = out["mask"]
        assert mask["format"] == "rle" and mask["size"] == [30, 44]
        rle = {"size": mask["size"], "counts": mask["counts"].encode()}
        np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), person.mask)


def test_png_masks_decode_to_person_masks(sample: tuple[ParsingResult, np.ndarray]) -> None:
    result, image = sample
    doc = json.loads(json.dumps(result_to_json(result, image, mask_format="png")))
    for person, out in zip(result.persons, doc["persons"], strict=True):
        assert set(out["mask"]) == {"format", "data"} and out["mask"]["format"] == "png"
        np.testing.assert_array_equal(np.asarray(_png(out["mask"]["data"])), person.mask)


def test_without_instances_and_with_overlay(sample: tuple[ParsingResult, np.ndarray]) -> None:
    result, image = sample
    doc = result_to_json(result, image, instances=False, include_overlay=True, alpha=0.3)
    assert list(doc) == ["image", "classes", "persons", "label_map", "overlay"]
    assert all("mask" not in p for p in doc["persons"])
    assert [p["id"] for p in doc["persons"]] == [1, 2]
    assert doc["overlay"]["format"] == "png"
    shown = np.asarray(_png(doc["overlay"]["data"]))
    np.testing.assert_array_equal(shown, render.overlay(image, result.semantic, alpha=0.3))


def test_no_persons(sample: tuple[ParsingResult, np.ndarray]) -> None:
    result, image = sample
    empty = ParsingResult(semantic=np.zeros_like(result.semantic), instances=[], persons=[])
    doc = result_to_json(empty, image)
    assert doc["persons"] == [] and [c["id"] for c in doc["classes"]] == [0]


def test_errors(sample: tuple[ParsingResult, np.ndarray]) -> None:
    result, image = sample
    with pytest.raises(ValueError, match="mask_format"):
        result_to_json(result, image, mask_format="polygon")
    with pytest.raises(ValueError, match="image"):
        result_to_json(result, image[:10])
    with pytest.raises(ValueError, match="alpha"):
        result_to_json(result, image, include_overlay=True, alpha=2.0)


def test_real_parse_round_trip(tiny_model_dir: Path) -> None:
    """A result of the tiny model: every person mask comes back exactly from the JSON."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(72, 96, 3), dtype=np.uint8)
    result = Parser(tiny_model_dir).parse(image)
    assert result.persons, "the tiny model is built to find persons"
    doc = json.loads(json.dumps(result_to_json(result, image, include_overlay=True)))
    assert doc["image"] == {"width": 96, "height": 72}
    assert sum(c["pixels"] for c in doc["classes"]) == 72 * 96
    np.testing.assert_array_equal(np.asarray(_png(doc["label_map"]["data"])), result.semantic)
    for person, out in zip(result.persons, doc["persons"], strict=True):
        rle = {"size": out["mask"]["size"], "counts": out["mask"]["counts"].encode()}
        np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), person.mask)
        assert out["area"] == int(person.mask.sum())
        assert out["part_pixels"] == {str(k): v for k, v in sorted(person.parts.items())}
