"""Raw logits against ModelScope's own M2FP run on the tiny reference
(tests/fixtures/m2fp/tiny_reference), plus batching and padding properties of M2FP.forward."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from m2fp.build import load_model
from m2fp.modeling.m2fp import M2FP
from tests.support.model_factory import make_tiny_model
from tests.support.paths import TINY_REFERENCE

ATOL = 1e-4  # README "Tolerances": ModelScope itself varies by up to 4e-5 across backends
CASES = torch.load(TINY_REFERENCE / "cases.pt", weights_only=True)["cases"]
NATIVE = [c["name"] for c in CASES]
PIPELINE = [c["name"] for c in CASES if c["pipeline"] is not None]


@pytest.fixture(scope="module")
def reference_model() -> M2FP:
    return load_model(TINY_REFERENCE)


def _case(name: str) -> dict:
    return next(c for c in CASES if c["name"] == name)


def _to_input(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) RGB → float32 (1, 3, H, W) in 0..255."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image.copy())
    return image.permute(2, 0, 1).float()[None]


@pytest.mark.parametrize("name", NATIVE)
def test_native_case_raw_outputs(reference_model: M2FP, name: str) -> None:
    case = _case(name)
    with torch.inference_mode():
        out = reference_model(_to_input(case["image"]), return_aux=True)
    assert out.padded_hw == tuple(case["padded_hw"])
    torch.testing.assert_close(out.class_logits, case["pred_logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.mask_logits, case["pred_masks"], atol=ATOL, rtol=0)
    aux = torch.stack(out.aux_class_logits)
    torch.testing.assert_close(aux, case["aux_pred_logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", PIPELINE)
def test_pipeline_case_raw_outputs(reference_model: M2FP, name: str) -> None:
    pipe = _case(name)["pipeline"]
    png = pipe["resized_image_png"].numpy().tobytes()
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape[:2] == tuple(pipe["resized_hw"])
    with torch.inference_mode():
        out = reference_model(_to_input(image), return_aux=True)
    assert out.padded_hw == tuple(pipe["padded_hw"])
    torch.testing.assert_close(out.class_logits, pipe["pred_logits"], atol=ATOL, rtol=0)
    strided = out.mask_logits[..., ::8, ::8]
    torch.testing.assert_close(strided, pipe["pred_masks_stride8"], atol=ATOL, rtol=0)
    aux = torch.stack(out.aux_class_logits)
    torch.testing.assert_close(aux, pipe["aux_pred_logits"], atol=ATOL, rtol=0)


def test_batch_of_two_equals_singles() -> None:
    model = make_tiny_model(0)
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (2, 3, 70, 90), generator=g).float()
    with torch.inference_mode():
        batch = model(images)
        singles = [model(images[i : i + 1]) for i in range(2)]
    for i, single in enumerate(singles):
        torch.testing.assert_close(batch.class_logits[i], single.class_logits[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(batch.mask_logits[i], single.mask_logits[0], atol=1e-4, rtol=0)
    # the two images differ, so their predictions must too
    assert not torch.allclose(batch.class_logits[0], batch.class_logits[1], atol=1e-3)


@pytest.mark.parametrize(
    ("h", "w", "hp", "wp"), [(61, 83, 64, 96), (33, 32, 64, 32), (64, 64, 64, 64)]
)
def test_odd_sizes_pad_to_multiple_of_32(h: int, w: int, hp: int, wp: int) -> None:
    model = make_tiny_model(0)
    g = torch.Generator().manual_seed(h * w)
    image = torch.randint(0, 256, (1, 3, h, w), generator=g).float()
    x = model.preprocess(image)
    assert x.shape[-2:] == (hp, wp)
    # padding is zero after normalisation, the image area is normalised
    mean = torch.tensor(model.config.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.pixel_std).view(1, 3, 1, 1)
    torch.testing.assert_close(x[..., :h, :w], (image - mean) / std)
    assert torch.count_nonzero(x[..., h:, :]) == 0 and torch.count_nonzero(x[..., :, w:]) == 0
    with torch.inference_mode():
        out = model(image)
        # an image already padded with the mean colour normalises to the same zero padding
        padded = mean.expand(1, 3, hp, wp).clone()
        padded[..., :h, :w] = image
        out_padded = model(padded)
    assert out.mask_logits.shape == (1, 12, hp // 4, wp // 4)
    assert out.class_logits.shape == (1, 12, 22)
    torch.testing.assert_close(out.class_logits, out_padded.class_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.mask_logits, out_padded.mask_logits, atol=1e-4, rtol=0)


def test_rejects_non_rgb_batch() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        make_tiny_model(0)(torch.zeros(3, 32, 32))
