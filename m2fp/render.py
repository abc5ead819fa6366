"""Renderers for a parsing result: colour overlay, cutout, label-map and mask PNGs, COCO RLE,
class statistics.

numpy, Pillow and `m2fp.png`, and everything stays in memory: the service calls these on every
request and never writes an upload or anything derived from it to disk.

Encoders: PNGs go through `m2fp.png` (row filtering in numpy, ISA-L deflate), several times
faster than Pillow's zlib at level 1 for about the size of its default level; lossless WebP
uses method 0 / quality (effort) 0, the fastest. 1-bit mask PNGs stay with Pillow (small
images). docs/performance.md gives the figures (`bench/render_encode.py`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
import pycocotools.mask as coco_mask
from PIL import Image

from m2fp.labelsets import CIHP, LabelSet
from m2fp.png import encode_png

WEBP_OPTIONS = {"lossless": True, "method": 0, "quality": 0, "exact": True}
IMAGE_FORMATS = ("png", "webp")


def _check_semantic(semantic: np.ndarray, labels: LabelSet = CIHP) -> np.ndarray:
    """Validate a label map of `labels` ids and return it as uint8 (no copy when it already
    is)."""
    n = len(labels)
    sem = np.asarray(semantic)
    if sem.ndim != 2 or sem.size == 0:
        raise ValueError(f"semantic must be a non-empty (H, W) array, got shape {sem.shape}")
    if sem.dtype == np.uint8:
        if sem.max() >= n:
            raise ValueError(f"semantic holds class ids >= {n}")
        return sem
    if not np.issubdtype(sem.dtype, np.integer):
        raise ValueError(f"semantic must hold integer class ids, got dtype {sem.dtype}")
    if sem.min() < 0 or sem.max() >= n:
        raise ValueError(f"semantic class ids must be in 0..{n - 1}")
    return sem.astype(np.uint8)


def _check_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got {img.dtype} {img.shape}")
    if img.shape[:2] != shape:
        raise ValueError(f"image is {img.shape[:2]} but the label map is {shape}")
    return img


def _check_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"mask must be a non-empty (H, W) array, got shape {m.shape}")
    return m.astype(bool, copy=False)


def _class_selection(classes: Iterable[int] | None, labels: LabelSet = CIHP) -> np.ndarray:
    """(len(labels),) bool: True for the chosen class ids (all when `classes` is None).

    Raises:
        ValueError: an id outside the set or not an integer.
    """
    n = len(labels)
    chosen = np.zeros(n, dtype=bool)
    if classes is None:
        chosen[:] = True
        return chosen
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, int | np.integer):
            raise ValueError(f"class ids must be integers, got {c!r}")
        if not 0 <= c < n:
            raise ValueError(f"class id {c} is outside 0..{n - 1}")
        chosen[c] = True
    return chosen


def colorize(
    semantic: np.ndarray, *, classes: Iterable[int] | None = None, labels: LabelSet = CIHP
) -> np.ndarray:
    """Paint each pixel with its class colour from the label set's palette.

    Args:
        semantic: (H, W) integer class ids of `labels` (0..19 for CIHP).
        classes: only these ids are painted; the others (and always Background) are black.
        labels: the label set the ids belong to.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    sem = _check_semantic(semantic, labels)
    lut = labels.palette.copy()
    lut[~_class_selection(classes, labels)] = 0
    return lut[sem]


def _blend_table(alpha: float, tinted: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(3, classes * 256) uint8: for channel c, class k and intensity v, at k*256+v, the
    blended value round((1-alpha)*v + alpha*palette[k, c]); untinted classes map v to v."""
    v = np.arange(256, dtype=np.float64)
    # (classes, intensity, channel)
    table = np.rint(v[None, :, None] * (1.0 - alpha) + palette[:, None, :] * alpha)
    table[~tinted] = v[None, :, None]
    return np.ascontiguousarray(table.astype(np.uint8).transpose(2, 0, 1)).reshape(3, -1)


def overlay(
    image: np.ndarray,
    semantic: np.ndarray,
    *,
    alpha: float = 0.6,
    classes: Iterable[int] | None = None,
    labels: LabelSet = CIHP,
) -> np.ndarray:
    """Alpha-blend the class colours over the image.

    Each tinted pixel becomes round((1 - alpha) * pixel + alpha * colour) per channel (rounded
    half to even, computed in float64). Background (class 0) is never tinted, nor are classes
    left out of `classes`: those pixels keep the image's values exactly.

    Args:
        image: (H, W, 3) uint8 RGB.
        semantic: (H, W) class ids 0..19.
        alpha: colour opacity, 0 (image only) to 1 (colours only).
        classes: tint only these class ids (all by default).
        labels: the label set of `semantic` and `classes` (its palette colours them).

    Returns:
        (H, W, 3) uint8 RGB, a new array.
    """
    sem = _check_semantic(semantic, labels)
    img = _check_image(image, sem.shape)
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    tinted = _class_selection(classes, labels)
    tinted[0] = False
    table = _blend_table(alpha, tinted, labels.palette)
    # Row of each pixel's class in the table; + intensity gives the flat index.
    base = sem.astype(np.uint16) << 8
    out = np.empty_like(img)
    for ch in range(3):
        out[..., ch] = table[ch].take(base + img[..., ch])
    return out


def cutout(
    image: np.ndarray,
    semantic: np.ndarray,
    classes: Iterable[int],
    *,
    labels: LabelSet = CIHP,
    within: np.ndarray | None = None,
) -> np.ndarray:
    """The image where the class is one of `classes`, transparent elsewhere.

    Transparent pixels are (0, 0, 0, 0): nothing of the hidden image survives in them.

    Args:
        image: (H, W, 3) uint8 RGB.
        semantic: (H, W) class ids 0..19.
        classes: the class ids to keep (at least one; 0 keeps the background).
        labels: the label set of `semantic` and `classes`.
        within: (H, W) bool, e.g. one person's mask: keep only pixels inside it too.

    Returns:
        (H, W, 4) uint8 RGBA.
    """
    keep = matte(semantic, classes, labels=labels, within=within) > 0
    img = _check_image(image, keep.shape)
    out = np.zeros((*keep.shape, 4), dtype=np.uint8)
    out[keep, :3] = img[keep]
    out[keep, 3] = 255
    return out


def matte(
    semantic: np.ndarray,
    classes: Iterable[int],
    *,
    labels: LabelSet = CIHP,
    within: np.ndarray | None = None,
) -> np.ndarray:
    """The alpha matte of chosen classes (and, with `within`, of one region such as a person).

    Args:
        semantic: (H, W) class ids of `labels`.
        classes: the class ids to keep (at least one; 0 keeps the background).
        labels: the label set of `semantic` and `classes`.
        within: (H, W) bool: keep only pixels inside it too.

    Returns:
        (H, W) uint8: 255 where kept, 0 elsewhere (a hard matte: one class per pixel).
    """
    sem = _check_semantic(semantic, labels)
    classes = list(classes)
    if not classes:
        raise ValueError("a matte needs at least one class id")
    keep = _class_selection(classes, labels)[sem]
    if within is not None:
        region = _check_mask(within)
        if region.shape != sem.shape:
            raise ValueError(f"within is {region.shape} but the label map is {sem.shape}")
        keep &= region
    return keep.view(np.uint8) * np.uint8(255)


def _save(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, "PNG", compress_level=1)
    else:
        image.save(buf, "WEBP", **WEBP_OPTIONS)
    return buf.getvalue()


def encode_image(array: np.ndarray, fmt: str = "png") -> bytes:
    """Encode a uint8 image losslessly, in memory.

    Args:
        array: (H, W) grey (L), (H, W, 3) RGB or (H, W, 4) RGBA, uint8.
        fmt: "png" or "webp" (lossless; a grey image is stored as RGB with equal channels, as
            WebP has no grey mode).

    Returns:
        The encoded file's bytes.
    """
    fmt = fmt.lower()
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"format must be one of {', '.join(IMAGE_FORMATS)}, got {fmt!r}")
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {arr.dtype}")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))) or arr.size == 0:
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if fmt == "png":
        return encode_png(arr)
    return _save(Image.fromarray(np.ascontiguousarray(arr)), fmt)


def label_map_png(semantic: np.ndarray, *, palette: bool = False, labels: LabelSet = CIHP) -> bytes:
    """PNG whose pixel values are the class ids.

    Args:
        semantic: (H, W) class ids of `labels` (0..19 for CIHP).
        palette: False: 8-bit greyscale (mode L), the form programs read (and that looks
            almost black in a viewer); True: 8-bit palette (mode P) carrying the set's
            palette, so a viewer shows the class colours while the stored values are the ids.
        labels: the label set of `semantic`.

    Returns:
        PNG bytes; decoding gives back exactly `semantic`.
    """
    sem = _check_semantic(semantic, labels)
    return encode_png(sem, palette=labels.palette if palette else None)


def mask_png(mask: np.ndarray) -> bytes:
    """1-bit greyscale PNG of a binary mask (white = inside); decodes back to the same mask."""
    m = _check_mask(mask)
    return _save(Image.fromarray(np.ascontiguousarray(m)), "png")


def mask_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a binary mask: {"size": [h, w], "counts": str}.

    Runs are counted in column-major order, as COCO does; `pycocotools.mask.decode` takes the
    dict as it is (or after `json.loads`) and returns the mask.
    """
    m = _check_mask(mask)
    rle = coco_mask.encode(np.asfortranarray(m, dtype=np.uint8))
    h, w = rle["size"]
    return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}


def class_stats(semantic: np.ndarray, *, labels: LabelSet = CIHP) -> list[dict]:
    """Pixel count and fraction of each class present, by id.

    Returns:
        [{"id", "key", "name", "color" ("#rrggbb"), "pixels", "fraction"}] for the ids of
        `labels` that occur (Background included), sorted by id; pixels sum to H*W.
    """
    sem = _check_semantic(semantic, labels)
    counts = np.bincount(sem.ravel(), minlength=len(labels))
    total = sem.size
    return [
        {
            "id": int(k),
            "key": labels.keys[k],
            "name": labels.names[k],
            "color": labels.color_hex(int(k)),
            "pixels": int(counts[k]),
            "fraction": float(counts[k]) / total,
        }
        for k in np.flatnonzero(counts)
    ]
