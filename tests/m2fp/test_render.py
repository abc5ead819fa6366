"""Renderers: exact colours, alpha math, class subsets, lossless round trips, RLE, statistics."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as coco_mask
import pytest

from m2fp import render
from m2fp.labels import CLASS_NAMES, NUM_CLASSES, PALETTE
from tests.support import images

# PASCAL-VOC colour map values, written out independently of m2fp.labels.
VOC = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 5: (128, 0, 128), 13: (192, 0, 128),
       15: (192, 128, 128), 19: (128, 192, 0)}  # fmt: skip


def _semantic(h: int = 37, w: int = 53, seed: int = 0) -> np.ndarray:
    """Blocks of every class plus noise, so each class and the background occur."""
    rng = np.random.default_rng(seed)
    sem = rng.integers(0, NUM_CLASSES, size=(h, w), dtype=np.uint8)
    sem[:5, :] = 0
    sem[5:10, :NUM_CLASSES] = np.arange(NUM_CLASSES, dtype=np.uint8)
    return sem


def _image(h: int = 37, w: int = 53, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------- colours


def test_palette_colours_are_voc() -> None:
    sem = np.array([list(VOC)], dtype=np.uint8)
    colours = render.colorize(sem)
    assert colours.dtype == np.uint8 and colours.shape == (1, len(VOC), 3)
    assert [tuple(int(v) for v in px) for px in colours[0]] == list(VOC.values())


def test_colorize_whole_map_and_subset() -> None:
    sem = _semantic()
    np.testing.assert_array_equal(render.colorize(sem), PALETTE[sem])
    sub = render.colorize(sem, classes=[2, 13])
    keep = np.isin(sem, [2, 13])
    np.testing.assert_array_equal(sub[keep], PALETTE[sem[keep]])
    assert not sub[~keep].any()


@pytest.mark.parametrize(
    "bad",
    [np.full((2, 2), 20, np.uint8), np.full((2, 2), -1, np.int16), np.zeros((2, 2, 1), np.uint8),
     np.zeros((0, 3), np.uint8), np.zeros((2, 2), np.float32)],
)  # fmt: skip
def test_invalid_label_maps_raise(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        render.colorize(bad)


def test_wider_integer_label_maps_are_accepted() -> None:
    sem = _semantic().astype(np.int64)
    np.testing.assert_array_equal(render.colorize(sem), PALETTE[sem])


@pytest.mark.parametrize("classes", [[20], [-1], [1.5], [True], ["2"]])
def test_invalid_class_ids_raise(classes: list) -> None:
    with pytest.raises(ValueError):
        render.colorize(_semantic(), classes=classes)


# ------------------------------------------------------------------------- overlay


def test_overlay_hand_computed() -> None:
    sem = np.array([[0, 1], [2, 19]], dtype=np.uint8)
    img = np.full((2, 2, 3), 100, dtype=np.uint8)
    out = render.overlay(img, sem, alpha=0.5)
    # 0.5 * 100 + 0.5 * colour: 128 → 114, 0 → 50, 192 → 146; background untouched.
    assert out.tolist() == [[[100, 100, 100], [114, 50, 50]], [[50, 114, 50], [114, 146, 50]]]


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1 / 3, 0.6, 0.75, 1.0])
def test_overlay_alpha_math(alpha: float) -> None:
    sem, img = _semantic(), _image()
    before = img.copy()
    out = render.overlay(img, sem, alpha=alpha)
    expected = np.rint(img * (1.0 - alpha) + PALETTE[sem].astype(np.float64) * alpha)
    expected[sem == 0] = img[sem == 0]
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    np.testing.assert_array_equal(img, before)  # the input is not modified
    assert out.dtype == np.uint8 and out.shape == img.shape


def test_overlay_extremes_and_background() -> None:
    sem, img = _semantic(), _image()
    fg = sem != 0
    full = render.overlay(img, sem, alpha=1.0)
    np.testing.assert_array_equal(full[fg], PALETTE[sem[fg]])
    np.testing.assert_array_equal(full[~fg], img[~fg])
    np.testing.assert_array_equal(render.overlay(img, sem, alpha=0.0), img)
    # Class 0 is never tinted, even when asked for.
    only_bg = render.overlay(img, sem, alpha=1.0, classes=[0])
    np.testing.assert_array_equal(only_bg, img)


def test_overlay_class_subset() -> None:
    sem, img = _semantic(), _image()
    out = render.overlay(img, sem, alpha=0.6, classes=[5, 9])
    tinted = np.isin(sem, [5, 9])
    np.testing.assert_array_equal(out[~tinted], img[~tinted])
    np.testing.assert_array_equal(out[tinted], render.overlay(img, sem, alpha=0.6)[tinted])
    assert (out[tinted] != img[tinted]).any()


@pytest.mark.parametrize("alpha", [-0.1, 1.01, float("nan")])
def test_overlay_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        render.overlay(_image(), _semantic(), alpha=alpha)


def test_overlay_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="label map"):
        render.overlay(_image(10, 10), _semantic(), alpha=0.5)
    with pytest.raises(ValueError, match="RGB"):
        render.overlay(_image().astype(np.float32), _semantic())
    with pytest.raises(ValueError, match="RGB"):
        render.overlay(np.zeros((37, 53, 4), np.uint8), _semantic())


# -------------------------------------------------------------------------- cutout


def test_cutout_keeps_only_chosen_classes() -> None:
    sem, img = _semantic(), _image()
    out = render.cutout(img, sem, [2, 13])
    keep = np.isin(sem, [2, 13])
    assert out.shape == (*sem.shape, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[keep, :3], img[keep])
    assert (out[keep, 3] == 255).all()
    assert not out[~keep].any()  # transparent and black: nothing of the hidden pixels


def test_cutout_background_and_errors() -> None:
    sem, img = _semantic(), _image()
    out = render.cutout(img, sem, [0])
    np.testing.assert_array_equal(out[..., 3] == 255, sem == 0)
    with pytest.raises(ValueError, match="at least one"):
        render.cutout(img, sem, [])
    with pytest.raises(ValueError):
        render.cutout(img, sem, [25])


# ------------------------------------------------------------------------ encoding


@pytest.mark.parametrize("fmt", ["png", "webp", "PNG"])
@pytest.mark.parametrize("channels", [None, 3, 4])
def test_encode_image_round_trip(fmt: str, channels: int | None) -> None:
    rng = np.random.default_rng(3)
    shape = (31, 45) if channels is None else (31, 45, channels)
    array = rng.integers(0, 256, size=shape, dtype=np.uint8)
    if channels == 4:
        array[:5, :, 3] = 0  # invisible pixels keep their colour values too
    data = render.encode_image(array, fmt)
    image = images.decode(data)
    assert image.format == fmt.upper()
    decoded = np.asarray(image if channels else image.convert("L"))
    np.testing.assert_array_equal(decoded, array)


def test_encode_image_signatures_and_errors() -> None:
    rgb = _image()
    assert render.encode_image(rgb).startswith(b"\x89PNG\r\n\x1a\n")
    webp = render.encode_image(rgb, "webp")
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
    with pytest.raises(ValueError, match="format"):
        render.encode_image(rgb, "jpeg")
    with pytest.raises(ValueError, match="uint8"):
        render.encode_image(rgb.astype(np.uint16))
    with pytest.raises(ValueError):
        render.encode_image(np.zeros((4, 4, 2), np.uint8))


def test_label_map_png_grey_round_trip() -> None:
    sem = _semantic()
    image = images.decode(render.label_map_png(sem))
    assert image.format == "PNG" and image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), sem)


def test_label_map_png_palette_round_trip_and_colours() -> None:
    sem = _semantic()
    image = images.decode(render.label_map_png(sem, palette=True))
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image), sem)  # the stored values are the ids
    palette = np.array(image.getpalette()[: 3 * NUM_CLASSES], dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette, PALETTE)
    # What a viewer shows: the class colours, not near-black ids.
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), render.colorize(sem))


@pytest.mark.parametrize("kind", ["random", "empty", "full", "stripe"])
def test_mask_png_round_trip(kind: str) -> None:
    mask = _mask(kind)
    image = images.decode(render.mask_png(mask))
    assert image.format == "PNG" and image.mode == "1"
    np.testing.assert_array_equal(np.asarray(image), mask)


# ----------------------------------------------------------------------------- RLE


def _mask(kind: str, h: int = 23, w: int = 41) -> np.ndarray:
    rng = np.random.default_rng(5)
    if kind == "random":
        return rng.random((h, w)) < 0.3
    mask = np.zeros((h, w), dtype=bool)
    if kind == "full":
        mask[:] = True
    elif kind == "stripe":
        mask[3:9, 10:30] = True
    return mask


def _decode_coco_string(counts: str) -> list[int]:
    """COCO's compressed RLE string → run lengths (5 bits per character + continuation bit,
    from the third run on stored as the difference to the run two before)."""
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            c = ord(counts[pos]) - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _expand_runs(runs: list[int], h: int, w: int) -> np.ndarray:
    flat = np.concatenate([np.full(n, i % 2, dtype=bool) for i, n in enumerate(runs)])
    return flat.reshape(w, h).T  # runs go down the columns


# pycocotools' decode warns under numpy 2 about its own __array__; the service never decodes.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("kind", ["random", "empty", "full", "stripe"])
def test_mask_rle_round_trip(kind: str) -> None:
    mask = _mask(kind)
    rle = render.mask_rle(mask)
    assert set(rle) == {"size", "counts"} and rle["size"] == [23, 41]
    assert isinstance(rle["counts"], str)
    assert json.loads(json.dumps(rle)) == rle
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    np.testing.assert_array_equal(coco_mask.decode(json.loads(json.dumps(rle))), decoded)
    assert coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()}) == mask.sum()
    np.testing.assert_array_equal(_expand_runs(_decode_coco_string(rle["counts"]), 23, 41), mask)


def test_mask_rle_known_strings() -> None:
    assert render.mask_rle(np.zeros((2, 3), bool)) == {"size": [2, 3], "counts": "6"}
    # Column-major: column 0 is [0, 1], the rest zero → runs 1, 1, 4.
    mask = np.zeros((2, 3), bool)
    mask[1, 0] = True
    assert render.mask_rle(mask) == {"size": [2, 3], "counts": "114"}


# --------------------------------------------------------------------------- stats


def test_class_stats() -> None:
    sem = _semantic()
    sem[sem == 7] = 3  # one class absent
    stats = render.class_stats(sem)
    assert json.loads(json.dumps(stats)) == stats
    ids = [s["id"] for s in stats]
    assert ids == sorted(ids) and 7 not in ids and 0 in ids
    assert sum(s["pixels"] for s in stats) == sem.size
    for s in stats:
        assert set(s) == {"id", "key", "name", "color", "pixels", "fraction"}
        assert s["name"] == CLASS_NAMES[s["id"]]
        assert s["color"] == "#{:02x}{:02x}{:02x}".format(*PALETTE[s["id"]])
        assert s["pixels"] == int((sem == s["id"]).sum())
        assert s["fraction"] == pytest.approx(s["pixels"] / sem.size, abs=0)
    assert render.class_stats(np.zeros((3, 4), np.uint8)) == [
        {
            "id": 0,
            "key": "background",
            "name": "Background",
            "color": "#000000",
            "pixels": 12,
            "fraction": 1.0,
        }
    ]


def test_matte_classes_and_region() -> None:
    sem = _semantic()
    chosen = [int(sem[0, 0]), int(sem[-1, -1])]
    matte = render.matte(sem, chosen)
    assert matte.dtype == np.uint8 and matte.shape == sem.shape
    assert set(np.unique(matte)) <= {0, 255}
    np.testing.assert_array_equal(matte == 255, np.isin(sem, chosen))
    region = np.zeros(sem.shape, bool)
    region[: sem.shape[0] // 2] = True
    within = render.matte(sem, chosen, within=region)
    np.testing.assert_array_equal(within == 255, np.isin(sem, chosen) & region)
    image = np.full((*sem.shape, 3), 7, np.uint8)
    cut = render.cutout(image, sem, chosen, within=region)
    np.testing.assert_array_equal(cut[..., 3], within)
    with pytest.raises(ValueError, match="at least one"):
        render.matte(sem, [])
    with pytest.raises(ValueError, match="within"):
        render.matte(sem, chosen, within=region[:2])


def test_renderers_in_another_label_set() -> None:
    from m2fp.labelsets import ATR

    sem = ATR.remap(_semantic())
    assert sem.max() < len(ATR)
    stats = render.class_stats(sem, labels=ATR)
    assert all(s["key"] == ATR.keys[s["id"]] for s in stats)
    colours = render.colorize(sem, labels=ATR)
    np.testing.assert_array_equal(colours, ATR.palette[sem])
    png = render.label_map_png(sem, palette=True, labels=ATR)
    decoded = images.decode(png)
    np.testing.assert_array_equal(np.asarray(decoded), sem)
    with pytest.raises(ValueError, match="outside"):
        render.overlay(np.zeros((*sem.shape, 3), np.uint8), sem, classes=[18], labels=ATR)
