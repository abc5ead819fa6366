"""The JSON form of a parsing result, shared by the HTTP API and `python -m m2fp parse --json`.

Class ids are integers everywhere ("classes"[].id, "parts", "part_areas"[].id); "part_pixels"
keeps v1's object keyed by the id as a string (a JSON object key is always a string).
Ids, keys and names are those of the chosen label set (`m2fp.labelsets`, CIHP by default).

Only plain dicts, lists, str, int, float and bool come out, so `json.dumps` takes it as is.
The service adds "request_id" and "timing_ms"; everything else is here:

    {"image": {"width": W, "height": H},
     "classes": [{"id", "key", "name", "color", "pixels", "fraction"}, ...],   (class_stats)
     "persons": [{"id", "score", "bbox": [x, y, w, h], "area", "parts": [ids],
                  "part_pixels": {"<id>": n, ...},          (v1: ids as strings, JSON keys)
                  "part_areas": [{"id", "key", "name", "pixels"}, ...],  (ids as integers)
                  "mask": {"format": "rle", "size": [h, w], "counts": "..."}
                        | {"format": "png", "data": "<base64 1-bit PNG>"}}, ...],
     "label_map": {"format": "png", "data": "<base64 8-bit greyscale PNG of class ids>"},
     "overlay": {"format": "png", "data": "<base64 RGB PNG>"}}           (include_overlay)
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import numpy as np

from m2fp.labelsets import CIHP, LabelSet
from m2fp.render import class_stats, encode_image, label_map_png, mask_png, mask_rle, overlay

if TYPE_CHECKING:
    from m2fp.parser import ParsingResult, Person

MASK_FORMATS = ("rle", "png")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def person_to_json(
    person: Person, *, mask_format: str | None = "rle", labels: LabelSet = CIHP
) -> dict:
    """One person; `mask_format` None leaves the mask out; parts in `labels` ids."""
    # a part remapped onto Background (e.g. torso skin in ATR) is no longer a part
    parts = {k: n for k, n in labels.remap_counts(person.parts).items() if k > 0}
    doc = {
        "id": int(person.id),
        "score": float(person.score),
        "bbox": [int(v) for v in person.bbox],
        "area": int(np.count_nonzero(person.mask)),
        "parts": list(parts),
        "part_pixels": {str(k): n for k, n in parts.items()},
        "part_areas": [
            {"id": k, "key": labels.keys[k], "name": labels.names[k], "pixels": n}
            for k, n in parts.items()
        ],
    }
    if mask_format == "rle":
        doc["mask"] = {"format": "rle", **mask_rle(person.mask)}
    elif mask_format == "png":
        doc["mask"] = {"format": "png", "data": _b64(mask_png(person.mask))}
    return doc


def result_to_json(
    result: ParsingResult,
    image: np.ndarray,
    *,
    instances: bool = True,
    mask_format: str = "rle",
    include_overlay: bool = False,
    alpha: float = 0.6,
    labels: LabelSet = CIHP,
) -> dict:
    """The JSON document of one parse (see the module docstring for the shape).

    Args:
        result: what `Parser.parse` returned for `image`.
        image: (H, W, 3) uint8 RGB, the parsed image (used only for the overlay; its size must
            match the result's).
        instances: include each person's mask; without it persons keep their id, score, bbox,
            area and parts.
        mask_format: "rle" (COCO compressed RLE, column-major) or "png" (base64 1-bit PNG).
        include_overlay: add the colour overlay as a base64 PNG.
        alpha: the overlay's opacity.
        labels: the label set of the ids, keys and names, the label map and the overlay
            colours (the result's CIHP classes are remapped onto it).

    Raises:
        ValueError: unknown mask format, image size not the result's, bad alpha.
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be rle or png, got {mask_format!r}")
    semantic = labels.remap(result.semantic)
    height, width = semantic.shape
    if np.shape(image)[:2] != (height, width):
        raise ValueError(f"image is {np.shape(image)[:2]} but the result is {(height, width)}")
    doc = {
        "image": {"width": int(width), "height": int(height)},
        "classes": class_stats(semantic, labels=labels),
        "persons": [
            person_to_json(p, mask_format=mask_format if instances else None, labels=labels)
            for p in result.persons
        ],
        "label_map": {"format": "png", "data": _b64(label_map_png(semantic, labels=labels))},
    }
    if include_overlay:
        rendered = overlay(image, semantic, alpha=alpha, labels=labels)
        doc["overlay"] = {"format": "png", "data": _b64(encode_image(rendered, "png"))}
    return doc
