"""Class names, the Human id and the fixed PASCAL-VOC palette."""

from __future__ import annotations

import numpy as np
import pytest

from m2fp.config import CIHP_CLASS_NAMES
from m2fp.labels import (
    CLASS_NAMES,
    HUMAN_CLASS_ID,
    HUMAN_CLASS_NAME,
    NUM_CLASSES,
    PALETTE,
    class_table,
    color_hex,
)


def test_names_are_the_model_classes_without_human() -> None:
    assert NUM_CLASSES == len(CLASS_NAMES) == 20
    assert CIHP_CLASS_NAMES[:20] == CLASS_NAMES
    assert CIHP_CLASS_NAMES[HUMAN_CLASS_ID] == HUMAN_CLASS_NAME == "Human"
    assert CLASS_NAMES[0] == "Background" and CLASS_NAMES[13] == "Face"
    assert CLASS_NAMES[18:] == ("Left-shoe", "Right-shoe")


def test_palette_is_the_pascal_voc_colour_map() -> None:
    assert PALETTE.shape == (20, 3) and PALETTE.dtype == np.uint8
    # the first VOC colours, as in SCHP's and CIHP's label PNGs
    assert PALETTE[:8].tolist() == [
        [0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
        [0, 0, 128], [128, 0, 128], [0, 128, 128], [128, 128, 128],
    ]  # fmt: skip
    assert PALETTE[15].tolist() == [192, 128, 128]  # VOC "person"
    assert PALETTE[19].tolist() == [128, 192, 0]
    assert len({tuple(c) for c in PALETTE.tolist()}) == 20
    with pytest.raises(ValueError):
        PALETTE[1, 0] = 1  # one fixed palette: read-only


def test_color_hex_and_class_table() -> None:
    assert color_hex(0) == "#000000"
    assert color_hex(1) == "#800000"
    assert color_hex(np.uint8(15)) == "#c08080"
    for bad in (-1, 20, 2.0, "3"):
        with pytest.raises(ValueError, match="class id"):
            color_hex(bad)
    table = class_table()
    assert [row["id"] for row in table] == list(range(20))
    assert table[2] == {"id": 2, "key": "hair", "name": "Hair", "color": "#008000"}
