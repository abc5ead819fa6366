"""Preprocessing: the pipeline's resize shape, the Pillow resize, image checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from m2fp.transforms import check_image, preprocess_shape, resize_image
from tests.support.paths import TINY_REFERENCE


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((97, 131), (640, 864)),
        ((61, 83), (640, 871)),  # tiny reference pipeline cases
        ((128, 96), (853, 640)),
        ((640, 640), (640, 640)),
        ((1, 1), (640, 640)),
        ((480, 640), (640, 853)),  # 853.33 rounds down
        ((3, 4), (640, 853)),
        ((1280, 1920), (640, 960)),
        ((1000, 3000), (444, 1333)),  # long side capped: 444.33
        ((3000, 1000), (1333, 444)),
        ((2, 5), (533, 1333)),  # 533.2
        ((1, 5000), (1, 1333)),  # 0.27 would round to 0: kept at 1
    ],
)
def test_preprocess_shape(hw: tuple[int, int], expected: tuple[int, int]) -> None:
    assert preprocess_shape(*hw) == expected


def test_preprocess_shape_rounds_half_up_like_the_pipeline() -> None:
    # 641 x 1283: scale 640/641, long side 1280.99... → int(x + 0.5) = 1281
    assert preprocess_shape(641, 1283) == (640, 1281)
    assert preprocess_shape(10, 20, short_edge=15, max_size=100) == (15, 30)
    with pytest.raises(ValueError, match="positive"):
        preprocess_shape(0, 10)


def _pipeline_cases() -> list[dict]:
    cases = torch.load(TINY_REFERENCE / "cases.pt", weights_only=True)["cases"]
    return [c for c in cases if c["pipeline"] is not None]


@pytest.mark.parametrize("case", _pipeline_cases(), ids=lambda c: c["name"])
def test_resize_is_bit_exact_with_the_pipeline(case: dict) -> None:
    pipe = case["pipeline"]
    expected = np.asarray(Image.open(io.BytesIO(pipe["resized_image_png"].numpy().tobytes())))
    image = case["image"].numpy()
    size = preprocess_shape(*image.shape[:2])
    assert size == tuple(pipe["resized_hw"])
    resized = resize_image(image, size)
    assert resized.dtype == np.uint8 and resized.flags.writeable
    np.testing.assert_array_equal(resized, expected)


def test_resize_to_the_same_size_is_identity() -> None:
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    assert resize_image(image, (7, 9)) is image


def test_the_pipelines_to_tensor_times_255_is_the_uint8_values() -> None:
    """Why `Parser` feeds the resized uint8 pixels as float32 without dividing by 255."""
    values = torch.arange(256, dtype=torch.float32)
    assert torch.equal(values / 255 * 255, values)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_check_image_rejects(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        check_image(bad)


def test_check_image_rejects_non_arrays() -> None:
    with pytest.raises(TypeError, match="numpy array"):
        check_image([[[0, 0, 0]]])
