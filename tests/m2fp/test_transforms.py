"""Preprocessing: the pipeline's resize shape, Pillow resize, tensor layout, the torch twin."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from m2fp.transforms import (
    check_image,
    preprocess,
    preprocess_shape,
    resize_image,
    resize_tensor,
    to_tensor,
)
from tests.support.paths import TINY_REFERENCE


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((97, 131), (640, 864)),  # reference notes §3
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
    tensor = preprocess(image)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, *size)
    np.testing.assert_array_equal(tensor.permute(1, 2, 0).numpy(), expected.astype(np.float32))


def test_resize_to_the_same_size_is_identity() -> None:
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    assert resize_image(image, (7, 9)) is image


def test_to_tensor_layout_and_values() -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    t = to_tensor(image)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert t[1, 0, 2].item() == image[0, 2, 1]
    # the pipeline's ToTensor() * 255 gives back exactly the uint8 values
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


def _images(h: int, w: int) -> list[np.ndarray]:
    """Noise (the hardest case for rounding) and a smooth colour ramp."""
    noise = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    return [noise, ramp.astype(np.uint8)]


@pytest.mark.parametrize(
    ("hw", "size"),
    [
        ((97, 131), (640, 864)),  # upscale
        ((1280, 1920), (640, 960)),  # downscale by 2: antialiased
        ((1000, 1500), (640, 960)),  # fractional downscale
        ((300, 300), (299, 301)),  # one axis down, one up
        ((5, 700), (3, 640)),
        ((40, 50), (40, 50)),  # identity
    ],
)
def test_torch_twin_within_one_level_of_pillow(hw: tuple[int, int], size: tuple[int, int]) -> None:
    for image in _images(*hw):
        expected = resize_image(image, size).astype(np.int16)
        batch = torch.from_numpy(image).permute(2, 0, 1)[None]
        for x in (batch, batch.float()):
            out = resize_tensor(x, size)
            assert out.shape == (1, 3, *size) and out.dtype == torch.float32
            got = out[0].permute(1, 2, 0).numpy().astype(np.int16)
            assert np.abs(got - expected).max() <= 1
            assert torch.equal(out, out.round())


def test_torch_twin_rejects_non_batches() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        resize_tensor(torch.zeros(3, 8, 8), (4, 4))
