"""Label sets: the 20 CIHP classes the model predicts, and the sets downstream tools expect.

A `LabelSet` is a table of classes (stable snake_case key, display name, colour) and the id of
each CIHP class in it; `remap` turns a CIHP semantic map into one of the set's ids with a
lookup table, `remap_counts` sums per-class pixel counts the same way. The tables themselves
are constants in `m2fp.labels`; docs/api.md shows them side by side.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from m2fp.labels import (
    ATR_CLASSES,
    ATR_FROM_CIHP,
    CLASS_KEYS,
    CLASS_NAMES,
    COARSE_CLASSES,
    COARSE_FROM_CIHP,
    LIP_CLASSES,
    LIP_FROM_CIHP,
    NUM_CLASSES,
    PALETTE,
    PALETTES_HEX,
    _voc_colormap,
)


@dataclass(frozen=True, eq=False)
class LabelSet:
    """One set of classes and how the CIHP classes map onto it.

    Attributes:
        name: "cihp", "lip", "atr" or "coarse".
        keys: stable snake_case key of each id, e.g. "upper_clothes".
        names: display name of each id.
        from_cihp: uint8 (20,): the set id of each CIHP id (0 stays Background).
        palette: uint8 (len, 3) RGB colour of each id (PASCAL-VOC colour map, 0 black).
    """

    name: str
    keys: tuple[str, ...]
    names: tuple[str, ...]
    from_cihp: np.ndarray
    palette: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.keys)
        if len(self.names) != n or self.palette.shape != (n, 3):
            raise ValueError(f"label set {self.name}: keys, names and palette differ in length")
        if self.from_cihp.shape != (NUM_CLASSES,) or int(self.from_cihp.max()) >= n:
            raise ValueError(f"label set {self.name}: from_cihp must map 20 ids into 0..{n - 1}")
        if self.from_cihp[0] != 0:
            raise ValueError(f"label set {self.name}: Background must stay 0")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def is_cihp(self) -> bool:
        """True when remapping is the identity (the model's own classes)."""
        return self.name == "cihp"

    def color_hex(self, class_id: int) -> str:
        r, g, b = (int(v) for v in self.palette[class_id])
        return f"#{r:02x}{g:02x}{b:02x}"

    def table(self) -> list[dict]:
        """The legend: `[{"id", "key", "name", "color"}, ...]` by id."""
        return [
            {"id": i, "key": key, "name": name, "color": self.color_hex(i)}
            for i, (key, name) in enumerate(zip(self.keys, self.names, strict=True))
        ]

    def class_id(self, token: str) -> int:
        """The id named by `token` (surrounding spaces ignored): a decimal id or a key, exactly
        as `keys` spells it (lowercase snake_case: keys are identifiers, not display names).

        Raises:
            KeyError: no such id or key in this set.
        """
        token = token.strip()
        if token.isascii() and token.isdigit():
            if int(token) < len(self):
                return int(token)
            raise KeyError(token)
        if token in self.keys:
            return self.keys.index(token)
        raise KeyError(token)

    def with_palette(self, palette: str) -> LabelSet:
        """This set in another of `PALETTES_HEX`'s palettes: "cihp" is the set's own colours;
        "cvd" (safe for colour-vision deficiencies) gives each id the colour of the first CIHP
        class it takes in, and keeps its own where it takes in none.

        Raises:
            KeyError: no such palette.
        """
        return _with_palette(self.name, palette)

    def remap(self, semantic: np.ndarray) -> np.ndarray:
        """uint8 (H, W) CIHP ids → uint8 (H, W) ids of this set (the same array for CIHP)."""
        if self.is_cihp:
            return semantic
        return self.from_cihp[np.asarray(semantic)]

    def remap_counts(self, counts: Mapping[int, int]) -> dict[int, int]:
        """CIHP id → pixels, summed into this set's ids (sorted by id; zeros dropped)."""
        out: dict[int, int] = {}
        for cihp_id, n in counts.items():
            k = int(self.from_cihp[int(cihp_id)])
            out[k] = out.get(k, 0) + int(n)
        return {k: n for k, n in sorted(out.items()) if n > 0}

    def cihp_ids(self, ids: Iterable[int]) -> list[int]:
        """The CIHP ids that map onto any of `ids` (for selecting in the model's own map)."""
        chosen = set(int(i) for i in ids)
        return [c for c in range(NUM_CLASSES) if int(self.from_cihp[c]) in chosen]


def _make(name: str, classes: tuple[tuple[str, str], ...], from_cihp: tuple[int, ...]) -> LabelSet:
    mapping = np.array(from_cihp, dtype=np.uint8)
    mapping.flags.writeable = False
    palette = _voc_colormap(len(classes))
    palette.flags.writeable = False
    return LabelSet(
        name,
        tuple(k for k, _ in classes),
        tuple(n for _, n in classes),
        mapping,
        palette,
    )


_IDENTITY = np.arange(NUM_CLASSES, dtype=np.uint8)
_IDENTITY.flags.writeable = False
CIHP = LabelSet("cihp", CLASS_KEYS, CLASS_NAMES, _IDENTITY, PALETTE)
LIP = _make("lip", LIP_CLASSES, LIP_FROM_CIHP)
ATR = _make("atr", ATR_CLASSES, ATR_FROM_CIHP)
COARSE = _make("coarse", COARSE_CLASSES, COARSE_FROM_CIHP)
LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (CIHP, LIP, ATR, COARSE)}


@functools.cache
def _with_palette(name: str, palette: str) -> LabelSet:
    base = LABEL_SETS[name]
    colours = PALETTES_HEX[palette]
    if palette == "cihp":
        return base
    table = base.palette.copy()
    for set_id in range(len(base)):
        sources = [c for c in range(NUM_CLASSES) if int(base.from_cihp[c]) == set_id]
        if sources:
            hex_colour = colours[sources[0]]
            table[set_id] = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    table.flags.writeable = False
    return dataclasses.replace(base, palette=table)


def label_set(name: str) -> LabelSet:
    """The set called `name` (cihp, lip, atr, coarse).

    Raises:
        ValueError: no such set.
    """
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(f"labels must be one of {', '.join(LABEL_SETS)}, got {name!r}") from None


__all__ = ["ATR", "CIHP", "COARSE", "LABEL_SETS", "LIP", "LabelSet", "label_set"]
