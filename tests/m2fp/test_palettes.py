"""The page's palettes (`m2fp.labels.PALETTES_HEX`): CIHP's as the server paints, and a
colour-vision-deficiency-safe one whose touching parts stay apart under simulated protanopia,
deuteranopia and tritanopia (Machado, Oliveira & Fernandes 2009, severity 1, on linear RGB)."""

from __future__ import annotations

import numpy as np
import pytest

from m2fp.labels import CLASS_NAMES, NUM_CLASSES, PALETTES_HEX, color_hex

SIMULATIONS = {
    "normal": np.eye(3),
    "protan": np.array(
        [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
         [-0.003882, -0.048116, 1.051998]]
    ),
    "deutan": np.array(
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
         [-0.011820, 0.042940, 0.968881]]
    ),
    "tritan": np.array(
        [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
         [0.004733, 0.691367, 0.303900]]
    ),
}  # fmt: skip
SRGB_TO_XYZ = np.array(
    [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
)
D65 = np.array([0.95047, 1.0, 1.08883])
# Parts that touch on a person: the pairs a reader must tell apart on the overlay.
TOUCHING = [
    ("Hair", "Face"), ("Hat", "Hair"), ("UpperClothes", "Pants"), ("UpperClothes", "Coat"),
    ("UpperClothes", "Left-arm"), ("UpperClothes", "Right-arm"), ("Left-arm", "Right-arm"),
    ("Left-leg", "Right-leg"), ("Left-shoe", "Right-shoe"), ("Pants", "Left-leg"),
    ("Pants", "Right-leg"), ("Face", "Torso-skin"), ("UpperClothes", "Torso-skin"),
    ("Dress", "Skirt"), ("Pants", "Left-shoe"), ("Pants", "Right-shoe"), ("Socks", "Left-shoe"),
    ("Socks", "Right-shoe"), ("Left-leg", "Left-shoe"), ("Right-leg", "Right-shoe"),
    ("Gloves", "Left-arm"), ("Gloves", "Right-arm"), ("Scarf", "Face"),
    ("Scarf", "UpperClothes"), ("Sunglasses", "Face"),
]  # fmt: skip


def lab(hex_colour: str, simulation: np.ndarray) -> np.ndarray:
    srgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    xyz = (SRGB_TO_XYZ @ np.clip(simulation @ linear, 0, 1)) / D65
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def smallest_difference(palette: tuple[str, ...]) -> float:
    index = {name: i for i, name in enumerate(CLASS_NAMES)}
    return min(
        float(np.linalg.norm(lab(palette[index[a]], m) - lab(palette[index[b]], m)))
        for m in SIMULATIONS.values()
        for a, b in TOUCHING
    )


def test_cihp_palette_is_the_servers():
    assert PALETTES_HEX["cihp"] == tuple(color_hex(i) for i in range(NUM_CLASSES))


@pytest.mark.parametrize("name", sorted(PALETTES_HEX))
def test_palettes_are_complete_distinct_and_black_for_background(name):
    palette = PALETTES_HEX[name]
    assert len(palette) == NUM_CLASSES
    assert len(set(palette)) == NUM_CLASSES
    assert palette[0] == "#000000"
    assert all(len(c) == 7 and c.startswith("#") and int(c[1:], 16) >= 0 for c in palette)


def test_cvd_palette_keeps_touching_parts_apart_in_every_simulated_vision():
    # CIELAB ΔE ≥ 40 is an obvious difference; CIHP's worst pair (pants against a right leg,
    # under protanopia) is below 2, i.e. the same colour.
    assert smallest_difference(PALETTES_HEX["cvd"]) >= 40
    assert smallest_difference(PALETTES_HEX["cihp"]) < 5
