"""A layered file for image editors: the photo, one layer per part and one per person.

`layer_stack` cuts the layers (pure numpy: each layer is the photo's own pixels where it
applies, transparent elsewhere, cropped to its bounding box); `layered_psd` writes them as an
Adobe Photoshop file through psd-tools, in memory. Photoshop, GIMP, Krita and Photopea open it.

Stack, bottom to top: "Photo" (opaque, the whole image), the parts present in id order, named
by their display name in the chosen label set ("Hair", "Upper-clothes"...), then "Person 1",
"Person 2"... . Every layer holds the photo's unchanged pixels, so any combination of visible
layers composites to the photo where they cover it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from m2fp.labelsets import CIHP, LabelSet

PHOTO_LAYER = "Photo"


@dataclass(frozen=True)
class Layer:
    """One layer: RGBA pixels placed at (top, left) on the canvas.

    Attributes:
        name: what the editor's layer list shows.
        top, left: the layer's offset on the canvas.
        pixels: uint8 (h, w, 4) RGBA; transparent pixels are (0, 0, 0, 0).
    """

    name: str
    top: int
    left: int
    pixels: np.ndarray


def _cut(image: np.ndarray, keep: np.ndarray, name: str) -> Layer | None:
    """The photo where `keep`, cropped to `keep`'s bounding box; None when `keep` is empty."""
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    inside = keep[y0:y1, x0:x1]
    rgba = np.zeros((y1 - y0, x1 - x0, 4), dtype=np.uint8)
    rgba[inside, :3] = image[y0:y1, x0:x1][inside]
    rgba[inside, 3] = 255
    return Layer(name, int(y0), int(x0), rgba)


def layer_stack(
    image: np.ndarray,
    semantic: np.ndarray,
    person_masks: Sequence[np.ndarray] = (),
    *,
    labels: LabelSet = CIHP,
) -> list[Layer]:
    """The layers, bottom first (see the module docstring).

    Args:
        image: (H, W, 3) uint8 RGB.
        semantic: (H, W) class ids of `labels` (already remapped).
        person_masks: bool (H, W) per person, person p at index p - 1.
        labels: names the part layers.

    Raises:
        ValueError: shapes that disagree.
    """
    img = np.asarray(image)
    sem = np.asarray(semantic)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got {img.dtype} {img.shape}")
    if sem.shape != img.shape[:2]:
        raise ValueError(f"image is {img.shape[:2]} but the label map is {sem.shape}")
    photo = np.concatenate([img, np.full((*sem.shape, 1), 255, np.uint8)], axis=2)
    layers = [Layer(PHOTO_LAYER, 0, 0, photo)]
    present = np.flatnonzero(np.bincount(sem.ravel(), minlength=len(labels)))
    for class_id in present[present > 0]:
        layers.append(_cut(img, sem == class_id, labels.names[class_id]))
    for number, mask in enumerate(person_masks, 1):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != sem.shape:
            raise ValueError(f"person {number}'s mask is {mask.shape}, not {sem.shape}")
        layer = _cut(img, mask, f"Person {number}")
        if layer is not None:
            layers.append(layer)
    return [layer for layer in layers if layer is not None]


def layered_psd(layers: Sequence[Layer], *, width: int, height: int) -> bytes:
    """An 8-bit Photoshop file (RGB + transparency, RLE-compressed channels) of `layers`,
    bottom first.

    Returns:
        The .psd file's bytes, made in memory.
    """
    from psd_tools import PSDImage
    from psd_tools.api import numpy_io
    from psd_tools.api.layers import PixelLayer

    if not layers or layers[0].pixels.shape[:2] != (height, width):
        raise ValueError("the bottom layer must cover the whole canvas")
    # An RGBA document: psd-tools then stores each layer's alpha as the layer's transparency
    # (in an RGB one it becomes a layer mask over opaque pixels).
    psd = PSDImage.new("RGBA", (width, height))
    for layer in layers:
        pil = Image.fromarray(np.ascontiguousarray(layer.pixels), "RGBA")
        PixelLayer.frompil(pil, psd, layer.name, top=layer.top, left=layer.left)  # appends
    # The merged image (what viewers without layers show) is the opaque bottom layer: every
    # layer above holds its pixels unchanged. `PSDImage.save` would composite the stack in
    # Python to find that out (seconds at 2 MP), so the section is set here and the record
    # written directly (psd-tools is pinned: these are its documented building blocks).
    bottom = layers[0].pixels
    color = bottom[..., :3].astype(np.float32) / np.float32(255.0)
    alpha = np.ones((height, width, 1), dtype=np.float32)
    record = psd._record
    record.image_data.set_data(numpy_io.encode_image_data(psd, color, alpha), record.header)
    buf = io.BytesIO()
    record.write(buf)
    return buf.getvalue()


__all__ = ["PHOTO_LAYER", "Layer", "layer_stack", "layered_psd"]
