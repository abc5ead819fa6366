"""The configs build exactly the official state_dict layout (keys, shapes, dtypes, counts)."""

from __future__ import annotations

import json

import pytest
import torch

from m2fp.build import build_model
from m2fp.config import M2FPConfig
from tests.support.paths import M2FP_FIXTURES, TINY_REFERENCE

OFFICIAL_CONFIG = M2FP_FIXTURES / "configuration.json"


def _official_keys() -> dict[str, tuple[list[int], str]]:
    out = {}
    for line in (M2FP_FIXTURES / "official_keys.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        out[key] = (json.loads(shape), dtype)
    return out


@pytest.fixture(scope="module")
def r101_meta() -> torch.nn.Module:
    cfg = M2FPConfig.from_modelscope(json.loads(OFFICIAL_CONFIG.read_text()))
    with torch.device("meta"):  # no memory, no init cost
        return build_model(cfg)


def test_official_configuration_is_r101() -> None:
    cfg = M2FPConfig.from_modelscope(json.loads(OFFICIAL_CONFIG.read_text()))
    assert cfg == M2FPConfig.r101()
    assert cfg.decoder.num_decoder_layers == 9 and cfg.decoder.num_classes == 21
    assert cfg.class_names[20] == "Human" and cfg.num_parsing == 20


def test_r101_state_dict_matches_official_keys(r101_meta: torch.nn.Module) -> None:
    official = _official_keys()
    ours = {
        k: (list(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in r101_meta.state_dict().items()
    }
    assert len(official) == 928
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {k: v for k, v in ours.items() if official[k] != v} == {}
    assert list(ours) == list(official)  # same order as ModelScope's module tree


def test_r101_parameter_count(r101_meta: torch.nn.Module) -> None:
    assert sum(p.numel() for p in r101_meta.parameters()) == 63_124_118
    assert sum(v.numel() for v in r101_meta.state_dict().values()) == 63_229_952
    # pixel_mean/std are non-persistent: not in the checkpoint
    assert "pixel_mean" not in r101_meta.state_dict()


def test_tiny_config_matches_tiny_reference() -> None:
    ref = json.loads((TINY_REFERENCE / "configuration.json").read_text())
    assert M2FPConfig.from_modelscope(ref) == M2FPConfig.tiny()
    sd = torch.load(TINY_REFERENCE / "pytorch_model.pt", weights_only=True)["model"]
    ours = build_model(M2FPConfig.tiny()).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in sd.items()
    }


@pytest.mark.parametrize("cfg", [M2FPConfig.r101(), M2FPConfig.tiny()], ids=["r101", "tiny"])
def test_modelscope_round_trip(cfg: M2FPConfig) -> None:
    d = json.loads(json.dumps(cfg.to_modelscope()))
    assert M2FPConfig.from_modelscope(d) == cfg
    assert M2FPConfig.from_modelscope(d["model"]) == cfg


def test_to_modelscope_has_official_fields() -> None:
    official = json.loads(OFFICIAL_CONFIG.read_text())["model"]
    ours = M2FPConfig.r101().to_modelscope()["model"]
    for section in ("backbone", "encoder", "decoder"):
        assert ours[section] == official[section]
    assert ours["classes"] == official["classes"]


def test_bad_configuration_rejected() -> None:
    d = M2FPConfig.tiny().to_modelscope()
    d["model"]["classes"] = d["model"]["classes"][:5]
    with pytest.raises(ValueError, match="class names"):
        M2FPConfig.from_modelscope(d)
    d = M2FPConfig.tiny().to_modelscope()
    d["model"]["type"] = "maskdino"
    with pytest.raises(ValueError, match="m2fp"):
        M2FPConfig.from_modelscope(d)
