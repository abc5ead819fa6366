"""Label sets: the tables, the CIHP → set mappings, ids and keys, remapping maps and counts."""

from __future__ import annotations

import numpy as np
import pytest

from m2fp.labels import CLASS_KEYS, CLASS_NAMES, NUM_CLASSES, PALETTE
from m2fp.labelsets import ATR, CIHP, COARSE, LABEL_SETS, LIP, label_set


def test_cihp_is_the_models_own_classes() -> None:
    assert CIHP.keys == CLASS_KEYS and CIHP.names == CLASS_NAMES
    np.testing.assert_array_equal(CIHP.palette, PALETTE)
    sem = np.arange(NUM_CLASSES, dtype=np.uint8).reshape(4, 5)
    assert CIHP.remap(sem) is sem


@pytest.mark.parametrize(("name", "size"), [("cihp", 20), ("lip", 20), ("atr", 18), ("coarse", 7)])
def test_sizes_keys_and_legend(name: str, size: int) -> None:
    labels = label_set(name)
    assert len(labels) == size and labels is LABEL_SETS[name]
    assert len(set(labels.keys)) == size
    assert all(k.isascii() and k == k.lower() and " " not in k for k in labels.keys)
    table = labels.table()
    assert [c["id"] for c in table] == list(range(size))
    assert table[0] == {"id": 0, "key": "background", "name": "Background", "color": "#000000"}
    assert len({c["color"] for c in table}) == size


@pytest.mark.parametrize(
    ("labels", "cihp", "expected"),
    [
        (LIP, "torso_skin", "background"),
        (LIP, "coat", "coat"),
        (ATR, "coat", "upper_clothes"),
        (ATR, "gloves", "background"),
        (ATR, "left_shoe", "left_shoe"),
        (ATR, "scarf", "scarf"),
        (COARSE, "face", "skin"),
        (COARSE, "right_leg", "skin"),
        (COARSE, "dress", "upper_clothes"),
        (COARSE, "skirt", "lower_clothes"),
        (COARSE, "socks", "shoes"),
        (COARSE, "sunglasses", "accessories"),
    ],
)
def test_mapping(labels, cihp: str, expected: str) -> None:
    sem = np.full((2, 3), CIHP.class_id(cihp), dtype=np.uint8)
    out = labels.remap(sem)
    assert out.dtype == np.uint8 and out.shape == sem.shape
    assert set(out.ravel().tolist()) == {labels.class_id(expected)}


def test_class_id_takes_ids_and_keys() -> None:
    assert CIHP.class_id("2") == CIHP.class_id("hair") == CIHP.class_id(" hair ") == 2
    assert CIHP.class_id("left_arm") == 14
    assert ATR.class_id("bag") == 16
    refused = [
        (CIHP, "20"), (CIHP, "hairs"), (ATR, "18"), (ATR, "coat"), (COARSE, ""),
        (CIHP, "\u00b2"), (CIHP, "Hair"), (CIHP, "left-arm"),
    ]  # fmt: skip
    for labels, token in refused:
        with pytest.raises(KeyError):
            labels.class_id(token)


def test_counts_are_summed_into_the_set() -> None:
    counts = {13: 10, 14: 5, 2: 7, 5: 3, 7: 4, 10: 1}
    assert COARSE.remap_counts(counts) == {1: 16, 2: 7, 3: 7}
    assert ATR.remap_counts(counts) == {0: 1, 2: 7, 4: 7, 11: 10, 14: 5}
    assert CIHP.remap_counts(counts) == dict(sorted(counts.items()))
    assert COARSE.cihp_ids([1]) == [10, 13, 14, 15, 16, 17]


def test_unknown_set_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cihp, lip, atr, coarse"):
        label_set("pascal")
