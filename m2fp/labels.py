"""The 20 CIHP parsing classes, the Human instance class and the one fixed colour palette.

Ids 0..19 are what the semantic map holds; id 20 ("Human") only labels whole-person instances.
The palette is the PASCAL-VOC colour map that SCHP's and CIHP's label PNGs use (0 is black), so
a label map coloured with it looks like those datasets' annotations.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "Background", "Hat", "Hair", "Gloves", "Sunglasses", "UpperClothes", "Dress", "Coat",
    "Socks", "Pants", "Torso-skin", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm",
    "Left-leg", "Right-leg", "Left-shoe", "Right-shoe",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)  # 20: the ids a semantic map can hold
HUMAN_CLASS_ID = 20  # the whole-person instance class (never in a semantic map)
HUMAN_CLASS_NAME = "Human"


def _voc_colormap(n: int) -> np.ndarray:
    """PASCAL-VOC colour map: the bits of the class id, three at a time, fill the colour
    channels from their most significant bit down."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, rgb = i, [0, 0, 0]
        for shift in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << shift
            c >>= 3
        cmap[i] = rgb
    return cmap


PALETTE: np.ndarray = _voc_colormap(NUM_CLASSES)
PALETTE.flags.writeable = False

# A palette for colour-vision deficiency, beside CIHP's (whose red/green pairs sit side by side):
# colours from Okabe & Ito's and Paul Tol's sets, assigned by a search that maximised the smallest
# CIELAB difference between parts that touch (hair/face, arms, legs, shoes, clothes, ...) under
# normal vision and simulated protanopia, deuteranopia and tritanopia: at least 50 (CIHP's: 1.6).
# tests/m2fp/test_palettes.py measures it. 0 stays black.
CVD_SAFE_HEX: tuple[str, ...] = (
    "#000000", "#eedd88", "#88ccee", "#d55e00", "#56b4e9", "#e69f00", "#bbcc33", "#009e73",
    "#cc6677", "#99ddff", "#0072b2", "#77aadd", "#bb5566", "#ee8866", "#dddddd", "#004488",
    "#882255", "#ddcc77", "#f0e442", "#332288",
)  # fmt: skip
# Palettes by name, as `"#rrggbb"` per class id 0..19: what the pages offer.
PALETTES_HEX: dict[str, tuple[str, ...]] = {
    "cihp": tuple("#" + "".join(f"{int(v):02x}" for v in PALETTE[i]) for i in range(NUM_CLASSES)),
    "cvd": CVD_SAFE_HEX,
}


def color_hex(class_id: int) -> str:
    """`"#rrggbb"` of a class id 0..19.

    Raises:
        ValueError: the id is not a semantic class.
    """
    if not isinstance(class_id, int | np.integer) or not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f"class id must be an integer in 0..{NUM_CLASSES - 1}, got {class_id!r}")
    r, g, b = (int(v) for v in PALETTE[class_id])
    return f"#{r:02x}{g:02x}{b:02x}"


def class_table() -> list[dict]:
    """The legend: `[{"id": 0, "key": "background", "name": "Background", "color": "#000000"},
    ...]` for ids 0..19."""
    return [
        {"id": i, "key": CLASS_KEYS[i], "name": name, "color": color_hex(i)}
        for i, name in enumerate(CLASS_NAMES)
    ]


# Stable snake_case keys of the CIHP classes, by id: what `classes=` accepts besides ids and
# what the JSON carries beside the display name. Keys never change; display names may.
CLASS_KEYS: tuple[str, ...] = (
    "background", "hat", "hair", "gloves", "sunglasses", "upper_clothes", "dress", "coat",
    "socks", "pants", "torso_skin", "scarf", "skirt", "face", "left_arm", "right_arm",
    "left_leg", "right_leg", "left_shoe", "right_shoe",
)  # fmt: skip

# Other label sets the semantic map can be remapped to (m2fp/labelsets.py). Each is its
# classes as (key, display name) by id, and the set id of each CIHP id 0..19.
# LIP: CIHP's 20 ids except 10, which is LIP's Jumpsuits; LIP has no torso skin, so CIHP's
# Torso-skin becomes Background and Jumpsuits is never produced.
LIP_CLASSES: tuple[tuple[str, str], ...] = (
    ("background", "Background"), ("hat", "Hat"), ("hair", "Hair"), ("glove", "Glove"),
    ("sunglasses", "Sunglasses"), ("upper_clothes", "Upper-clothes"), ("dress", "Dress"),
    ("coat", "Coat"), ("socks", "Socks"), ("pants", "Pants"), ("jumpsuits", "Jumpsuits"),
    ("scarf", "Scarf"), ("skirt", "Skirt"), ("face", "Face"), ("left_arm", "Left-arm"),
    ("right_arm", "Right-arm"), ("left_leg", "Left-leg"), ("right_leg", "Right-leg"),
    ("left_shoe", "Left-shoe"), ("right_shoe", "Right-shoe"),
)  # fmt: skip
LIP_FROM_CIHP: tuple[int, ...] = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 11, 12, 13, 14, 15, 16, 17, 18, 19,
)  # fmt: skip
# ATR (18 classes, the set of the try-on pipelines' clothes parsers). Gloves, socks and torso
# skin have no ATR class and become Background; Coat is Upper-clothes. Belt and Bag are
# never produced (CIHP has neither).
ATR_CLASSES: tuple[tuple[str, str], ...] = (
    ("background", "Background"), ("hat", "Hat"), ("hair", "Hair"),
    ("sunglasses", "Sunglasses"), ("upper_clothes", "Upper-clothes"), ("skirt", "Skirt"),
    ("pants", "Pants"), ("dress", "Dress"), ("belt", "Belt"), ("left_shoe", "Left-shoe"),
    ("right_shoe", "Right-shoe"), ("face", "Face"), ("left_leg", "Left-leg"),
    ("right_leg", "Right-leg"), ("left_arm", "Left-arm"), ("right_arm", "Right-arm"),
    ("bag", "Bag"), ("scarf", "Scarf"),
)  # fmt: skip
ATR_FROM_CIHP: tuple[int, ...] = (
    0, 1, 2, 0, 3, 4, 7, 4, 0, 6, 0, 17, 5, 11, 14, 15, 12, 13, 9, 10,
)  # fmt: skip
# Coarse (7 classes): skin is face, arms, legs and torso skin; a dress counts as upper
# clothes (it hangs from the shoulders); socks go with the shoes; hat, gloves, sunglasses
# and scarf are accessories.
COARSE_CLASSES: tuple[tuple[str, str], ...] = (
    ("background", "Background"), ("skin", "Skin"), ("hair", "Hair"),
    ("upper_clothes", "Upper clothes"), ("lower_clothes", "Lower clothes"), ("shoes", "Shoes"),
    ("accessories", "Accessories"),
)  # fmt: skip
COARSE_FROM_CIHP: tuple[int, ...] = (
    0, 6, 2, 6, 6, 3, 3, 3, 5, 4, 1, 6, 4, 1, 1, 1, 1, 1, 5, 5,
)  # fmt: skip
