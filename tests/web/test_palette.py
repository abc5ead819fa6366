"""`palette=` of the parse and the legend: the colour-blind-safe palette by the API, as the
pages offer it (m2fp.labels.PALETTES_HEX)."""

from __future__ import annotations

from base64 import b64decode

import numpy as np
import pytest

from m2fp.labels import CVD_SAFE_HEX, PALETTES_HEX
from tests.support import images

PARSE = "/api/v1/parse"


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def test_the_legend_lists_the_chosen_palette(client):
    default = client.get("/api/v1/classes").get_json()["classes"]
    cvd = client.get("/api/v1/classes?palette=cvd").get_json()["classes"]
    assert [c["color"] for c in default] == list(PALETTES_HEX["cihp"])
    assert [c["color"] for c in cvd] == list(CVD_SAFE_HEX)
    assert [c["key"] for c in cvd] == [c["key"] for c in default]


def test_the_overlay_is_painted_in_the_chosen_palette(client):
    png = images.png()
    label_map = client.post(f"{PARSE}?output=json", data=png, content_type="image/png")
    ids = np.asarray(images.decode(b64decode(label_map.get_json()["label_map"]["data"])))
    part = int(np.bincount(ids[ids > 0].ravel()).argmax())
    r = client.post(
        f"{PARSE}?output=overlay&alpha=1&palette=cvd", data=png, content_type="image/png"
    )
    assert r.status_code == 200
    overlay = np.asarray(images.decode(r.data).convert("RGB"))
    painted = overlay[ids == part]
    assert (painted == _rgb(CVD_SAFE_HEX[part])).all()


def test_other_label_sets_take_the_colour_of_their_first_cihp_class(client):
    atr = client.get("/api/v1/classes?labels=atr&palette=cvd").get_json()["classes"]
    hair = next(c for c in atr if c["key"] == "hair")
    assert hair["color"] == CVD_SAFE_HEX[2]  # CIHP's hair is id 2


@pytest.mark.parametrize("query", ["palette=rainbow", "palette=cvd&palette=cihp"])
def test_an_unknown_or_repeated_palette_is_400(client, query):
    r = client.get(f"/api/v1/classes?{query}")
    assert r.status_code == 400 and "palette" in r.get_json()["error"]["message"]
    r = client.post(f"{PARSE}?{query}", data=images.png(), content_type="image/png")
    assert r.status_code == 400 and "palette" in r.get_json()["error"]["message"]
