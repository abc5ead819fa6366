"""The layered file: which layers, cut how, and a PSD that psd-tools and Pillow read back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage

from m2fp.labelsets import CIHP, COARSE
from m2fp.layers import PHOTO_LAYER, layer_stack, layered_psd


def _scene() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    semantic = np.zeros((30, 40), np.uint8)
    semantic[2:12, 5:15] = 2  # hair
    semantic[12:28, 4:16] = 5  # upper clothes
    semantic[20, 10] = 0  # a hole in it
    semantic[10:20, 25:35] = 13  # face
    first = np.zeros((30, 40), bool)
    first[2:28, 4:16] = True
    second = np.zeros((30, 40), bool)
    second[10:20, 25:35] = True
    return image, semantic, [first, second]


def test_stack_order_names_and_cuts() -> None:
    image, semantic, persons = _scene()
    stack = layer_stack(image, semantic, persons)
    assert [layer.name for layer in stack] == [
        PHOTO_LAYER, "Hair", "UpperClothes", "Face", "Person 1", "Person 2"
    ]  # fmt: skip
    photo = stack[0]
    assert (photo.top, photo.left) == (0, 0) and photo.pixels.shape == (30, 40, 4)
    np.testing.assert_array_equal(photo.pixels[..., :3], image)
    assert (photo.pixels[..., 3] == 255).all()
    hair = stack[1]
    assert (hair.top, hair.left, hair.pixels.shape) == (2, 5, (10, 10, 4))
    np.testing.assert_array_equal(hair.pixels[..., :3], image[2:12, 5:15])
    person = stack[4]
    assert (person.top, person.left, person.pixels.shape[:2]) == (2, 4, (26, 12))
    # transparent pixels carry nothing of the photo
    upper = stack[2]
    hidden = upper.pixels[..., 3] == 0
    assert hidden.any() and not upper.pixels[hidden].any()


def test_stack_in_another_label_set_and_empty_persons() -> None:
    image, semantic, persons = _scene()
    coarse = COARSE.remap(semantic)
    empty = np.zeros((30, 40), bool)
    stack = layer_stack(image, coarse, [empty, persons[1]], labels=COARSE)
    assert [layer.name for layer in stack] == [
        PHOTO_LAYER, "Skin", "Hair", "Upper clothes", "Person 2"
    ]  # fmt: skip


def test_psd_reads_back_with_its_layers_and_merged_image() -> None:
    image, semantic, persons = _scene()
    stack = layer_stack(image, semantic, persons, labels=CIHP)
    data = layered_psd(stack, width=40, height=30)
    psd = PSDImage.open(io.BytesIO(data))
    assert psd.size == (40, 30) and psd.color_mode == 3  # RGB
    assert [layer.name for layer in psd] == [layer.name for layer in stack]
    for read, made in zip(psd, stack, strict=True):
        height, width = made.pixels.shape[:2]
        assert read.bbox == (made.left, made.top, made.left + width, made.top + height)
        pixels = np.asarray(read.topil().convert("RGBA"))
        np.testing.assert_array_equal(pixels, made.pixels)
    merged = Image.open(io.BytesIO(data))  # Pillow reads the merged image
    np.testing.assert_array_equal(np.asarray(merged.convert("RGB")), image)


def test_errors() -> None:
    image, semantic, persons = _scene()
    with pytest.raises(ValueError, match="label map"):
        layer_stack(image[:10], semantic)
    with pytest.raises(ValueError, match="RGB"):
        layer_stack(image[..., 0], semantic)
    with pytest.raises(ValueError, match="person 1"):
        layer_stack(image, semantic, [persons[0][:5]])
    with pytest.raises(ValueError, match="whole canvas"):
        layered_psd(layer_stack(image, semantic)[1:], width=40, height=30)


def test_gimp_keeps_each_layers_transparency(tmp_path) -> None:
    from tests.support import gimp

    image, semantic, persons = _scene()
    path = tmp_path / "scene.psd"
    path.write_bytes(layered_psd(layer_stack(image, semantic, persons), width=40, height=30))
    size, layers = gimp.load_layers(path, tmp_path)
    assert size == (40, 30)
    assert layers == [
        ("Photo", 40, 30), ("Hair", 10, 10), ("UpperClothes", 12, 16), ("Face", 10, 10),
        ("Person 1", 12, 26), ("Person 2", 10, 10),
    ]  # fmt: skip
    # the hole at (x=10, y=20) is (6, 8) in the layer; (0, 0) is inside the upper clothes
    alpha = gimp.layer_alpha(path, tmp_path, "UpperClothes", [(6, 8), (0, 0)])
    assert alpha == {(6, 8): 0, (0, 0): 255}
