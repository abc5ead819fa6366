"""Parser end to end: ModelScope's outputs on the tiny reference (native and pipeline cases),
batches equal singles, persons, inputs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2fp.build import load_model
from m2fp.parser import Parser, ParsingResult
from tests.support.model_factory import make_tiny_model
from tests.support.paths import TINY_REFERENCE

CASES = torch.load(TINY_REFERENCE / "cases.pt", weights_only=True)["cases"]


@pytest.fixture(scope="module")
def reference_model() -> torch.nn.Module:
    return load_model(TINY_REFERENCE)


@pytest.fixture(scope="module")
def tiny_parser() -> Parser:
    """Images at their own size (no 640 resize): small forwards keep the suite fast."""
    return Parser(make_tiny_model(0), short_edge=None)


def _case(name: str) -> dict:
    return next(c for c in CASES if c["name"] == name)


def _assert_same_instances(
    result: ParsingResult, reference: list[tuple[int, float, np.ndarray, int]], fragile_qyx
) -> None:
    """Instances equal after sorting by (category, score); masks may differ only at the
    recorded fragile pixels of the instance's query."""
    ours = sorted(result.instances, key=lambda i: (i.category_id, i.score))
    reference = sorted(reference, key=lambda r: (r[0], r[1]))
    assert [i.category_id for i in ours] == [r[0] for r in reference]
    fragile = fragile_qyx.tolist()
    for inst, (_, score, mask, query) in zip(ours, reference, strict=True):
        assert inst.score == pytest.approx(score, abs=1e-5)
        assert inst.mask.dtype == bool and inst.mask.shape == mask.shape
        allowed = np.zeros(mask.shape, dtype=bool)
        for q, y, x in fragile:
            if q == query:
                allowed[y, x] = True
        assert not ((inst.mask != mask) & ~allowed).any()


@pytest.mark.parametrize("name", [c["name"] for c in CASES])
def test_native_case(reference_model: torch.nn.Module, name: str) -> None:
    case = _case(name)
    parser = Parser(reference_model, short_edge=None)  # the image as given, like the case
    result = parser.parse(case["image"].numpy())
    reference = [
        (o["category_id"], o["score"], o["mask"].numpy(), o["query"])
        for o in case["part_outputs"] + case["human_outputs"]
    ]
    _assert_same_instances(result, reference, case["margins"]["mask_fragile_qyx"])
    assert (result.height, result.width) == (case["height"], case["width"])
    assert result.semantic.dtype == np.uint8
    fragile = np.zeros(result.semantic.shape, dtype=bool)
    fragile[tuple(case["margins"]["semantic_fragile_yx"].T.tolist())] = True
    assert not ((result.semantic != case["semantic_map"].numpy()) & ~fragile).any()


@pytest.mark.parametrize("name", [c["name"] for c in CASES if c["pipeline"] is not None])
def test_pipeline_case(reference_model: torch.nn.Module, name: str) -> None:
    case = _case(name)
    pipe = case["pipeline"]
    parser = Parser(reference_model)
    image = case["image"].numpy()
    prepared = parser.prepare(image)
    png = pipe["resized_image_png"].numpy().tobytes()
    np.testing.assert_array_equal(prepared.pixels, np.asarray(Image.open(io.BytesIO(png))))
    assert prepared.resized_hw == tuple(pipe["resized_hw"])
    assert prepared.padded_hw == tuple(pipe["padded_hw"])
    assert prepared.original_hw == image.shape[:2]
    result = parser.run([prepared])[0]
    names = reference_model.config.class_names
    reference = [
        (names.index(label), score, mask.numpy(), query)
        for label, score, mask, query in zip(
            pipe["labels"], pipe["scores"], pipe["masks"], pipe["queries"], strict=True
        )
    ]
    _assert_same_instances(result, reference, pipe["margins"]["mask_fragile_qyx"])
    assert result.semantic.shape == image.shape[:2]
    assert result.persons  # every reference case has humans


def _assert_results_match(a: ParsingResult, b: ParsingResult) -> None:
    """Equal up to float rounding of batched kernels: same instances, near scores, masks and
    maps equal but for a handful of pixels on a decision boundary."""
    assert a.semantic.shape == b.semantic.shape
    assert np.mean(a.semantic != b.semantic) < 1e-3
    assert [i.category_id for i in a.instances] == [i.category_id for i in b.instances]
    for x, y in zip(a.instances, b.instances, strict=True):
        assert x.score == pytest.approx(y.score, abs=1e-4)
        assert np.mean(x.mask != y.mask) < 1e-3
    assert [p.id for p in a.persons] == [p.id for p in b.persons]


def _mixed_images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    sizes = [(60, 80), (50, 70), (90, 90), (64, 64), (200, 100), (45, 60)]
    images = []
    for h, w in sizes:
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        images.append(np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)))
    return images


def test_batch_equals_singles(tiny_parser: Parser) -> None:
    images = _mixed_images()
    prepared = [tiny_parser.prepare(image) for image in images]
    # padded 64x96 (twice), 96x96, 64x64 (twice), 224x128
    assert len({p.padded_hw for p in prepared}) == 4
    singles = [tiny_parser.parse(image) for image in images]
    batched = tiny_parser.parse_batch(images)
    assert len(batched) == len(images)
    for single, batch, image in zip(singles, batched, images, strict=True):
        assert batch.semantic.shape == image.shape[:2]
        _assert_results_match(single, batch)
    assert sum(len(r.instances) for r in singles) > 20  # the comparison is not vacuous


def test_run_keeps_input_order_across_groups(tiny_parser: Parser) -> None:
    images = _mixed_images()[:4]
    prepared = [tiny_parser.prepare(image) for image in reversed(images)]
    results = tiny_parser.run(prepared)
    assert [r.semantic.shape for r in results] == [im.shape[:2] for im in reversed(images)]


def test_persons_are_consistent(tiny_parser: Parser) -> None:
    results = tiny_parser.parse_batch(_mixed_images())
    seen = 0
    for result in results:
        humans = [i for i in result.instances if i.category_id == 20]
        union = np.zeros(result.semantic.shape, dtype=bool)
        for h in humans:
            union |= h.mask
        owned = np.zeros_like(union)
        for n, person in enumerate(result.persons, 1):
            seen += 1
            assert person.id == n
            assert person.mask.dtype == bool and person.mask.shape == result.semantic.shape
            assert not (owned & person.mask).any()  # no pixel counted twice
            owned |= person.mask
            assert person.score in [h.score for h in humans]
            ys, xs = np.nonzero(person.mask)
            x, y, w, h = person.bbox
            assert (x, y, w, h) == (
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            )
            counts = np.bincount(result.semantic[person.mask], minlength=20)
            assert person.parts == {c: int(counts[c]) for c in range(1, 20) if counts[c]}
            assert person.area == person.mask.sum() >= sum(person.parts.values())
        assert [p.score for p in result.persons] == sorted(
            (p.score for p in result.persons), reverse=True
        )
        assert np.array_equal(owned, union)  # every human pixel belongs to exactly one person
    assert seen >= 6


def test_parser_from_directory_equals_parser_from_model(tiny_model_dir: Path) -> None:
    image = _mixed_images()[0]
    from_dir = Parser(tiny_model_dir, short_edge=None).parse(image)
    from_model = Parser(make_tiny_model(0), short_edge=None).parse(image)
    assert np.array_equal(from_dir.semantic, from_model.semantic)
    assert [i.score for i in from_dir.instances] == [i.score for i in from_model.instances]


def test_parser_loads_weights_from_a_file_object(tiny_model_dir: Path) -> None:
    weights = io.BytesIO((tiny_model_dir / "pytorch_model.pt").read_bytes())
    parser = Parser(tiny_model_dir, weights=weights)
    assert parser.device == torch.device("cpu") and parser.dtype == torch.float32
    with pytest.raises(ValueError, match="weights="):
        Parser(make_tiny_model(0), weights=io.BytesIO(b""))


def test_pil_and_readonly_inputs(tiny_parser: Parser) -> None:
    image = _mixed_images()[3]
    readonly = image.copy()
    readonly.flags.writeable = False
    a = tiny_parser.parse(readonly)
    b = tiny_parser.parse(Image.fromarray(image).convert("RGBA"))  # converted to RGB
    assert np.array_equal(a.semantic, b.semantic)
    prepared = tiny_parser.prepare(image)
    assert prepared.pixels is not image and np.array_equal(prepared.pixels, image)


@pytest.mark.parametrize(("hw", "resized"), [((2, 300), (9, 1333)), ((1, 1), (640, 640))])
def test_odd_sizes_with_the_pipeline_resize(hw: tuple[int, int], resized: tuple[int, int]) -> None:
    parser = Parser(make_tiny_model(0))
    image = np.full((*hw, 3), 90, dtype=np.uint8)
    assert parser.prepare(image).resized_hw == resized
    result = parser.parse(image)
    assert result.semantic.shape == hw
    assert all(i.mask.shape == hw for i in result.instances)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (np.zeros((10, 10), np.uint8), ValueError),
        (np.zeros((10, 10, 3), np.float32), ValueError),
        ("image.jpg", TypeError),
    ],
)
def test_rejects_bad_images(tiny_parser: Parser, bad: object, error: type) -> None:
    with pytest.raises(error):
        tiny_parser.parse(bad)
