"""Checkpoint reading, strict loading and model-directory errors with clear messages."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from m2fp.build import load_model, save_model_dir
from m2fp.checkpoint import (
    CheckpointError,
    ModelDirError,
    load_state_dict_strict,
    read_state_dict,
    remap_keys,
)
from tests.support.model_factory import make_tiny_model, write_tiny_model_dir


def _bytes(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("ckpt"), seed=0)


def test_round_trip_directory(model_dir: Path) -> None:
    model = load_model(model_dir)
    assert not model.training
    original = make_tiny_model(0).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_weights_file_object_overrides_directory(model_dir: Path, tmp_path: Path) -> None:
    other = make_tiny_model(1)
    (tmp_path / "configuration.json").write_bytes((model_dir / "configuration.json").read_bytes())
    model = load_model(tmp_path, weights=_bytes({"model": other.state_dict()}))
    key = "sem_seg_head.predictor.class_embed.weight"
    assert torch.equal(model.state_dict()[key], other.state_dict()[key])


def test_read_bare_and_wrapped_state_dict() -> None:
    sd = {"a": torch.ones(2)}
    assert read_state_dict(_bytes(sd)).keys() == {"a"}
    assert read_state_dict(_bytes({"model": sd})).keys() == {"a"}


def test_read_rejects_non_tensors_and_pickled_code() -> None:
    with pytest.raises(CheckpointError, match="not tensors"):
        read_state_dict(_bytes({"a": 1}))
    with pytest.raises(CheckpointError, match="cannot read"):
        # weights_only=True refuses arbitrary objects
        read_state_dict(_bytes({"a": torch.nn.Linear(1, 1)}))


def test_missing_key_named() -> None:
    model = make_tiny_model(0)
    sd = model.state_dict()
    del sd["sem_seg_head.predictor.query_feat.weight"]
    with pytest.raises(
        CheckpointError, match=r"1 missing keys: sem_seg_head\.predictor\.query_feat"
    ):
        load_state_dict_strict(model, sd)


def test_unexpected_key_named() -> None:
    model = make_tiny_model(0)
    sd = model.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: extra\.weight"):
        load_state_dict_strict(model, sd)


def test_wrong_shape_named() -> None:
    model = make_tiny_model(0)
    sd = model.state_dict()
    sd["sem_seg_head.predictor.class_embed.bias"] = torch.zeros(5)
    with pytest.raises(
        CheckpointError, match=r"class_embed\.bias \(checkpoint \(5,\), model \(22,\)\)"
    ):
        load_state_dict_strict(model, sd)


def test_long_key_lists_are_truncated() -> None:
    model = make_tiny_model(0)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(model, {})
    message = str(info.value)
    assert f"{len(model.state_dict())} missing keys" in message
    assert "more)" in message and len(message) < 1000


def test_detectron2_checkpoint_is_remapped() -> None:
    model = make_tiny_model(0)
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["criterion.empty_weight"] = torch.ones(22)
    assert "criterion.empty_weight" not in remap_keys(sd, model)
    load_state_dict_strict(make_tiny_model(1), sd)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_missing_configuration(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match=r"configuration\.json is missing"):
        load_model(tmp_path)


def test_malformed_configuration(tmp_path: Path) -> None:
    (tmp_path / "configuration.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        load_model(tmp_path)


def test_missing_weights_mentions_encrypted_file(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "configuration.json").write_bytes((model_dir / "configuration.json").read_bytes())
    with pytest.raises(ModelDirError, match=r"pytorch_model\.pt is missing$"):
        load_model(tmp_path)
    (tmp_path / "pytorch_model.pt.enc").write_bytes(b"\0" * 16)
    with pytest.raises(ModelDirError, match=r"encrypted.*weights="):
        load_model(tmp_path)


def test_truncated_weights_file(model_dir: Path, tmp_path: Path) -> None:
    save_model_dir(make_tiny_model(0), tmp_path)
    data = (tmp_path / "pytorch_model.pt").read_bytes()
    (tmp_path / "pytorch_model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"pytorch_model\.pt: cannot read checkpoint"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(tmp_path, weights=io.BytesIO(b"garbage"))


def test_checkpoint_for_other_architecture(model_dir: Path, tmp_path: Path) -> None:
    cfg = json.loads((model_dir / "configuration.json").read_text())
    cfg["model"]["decoder"]["num_queries"] = 7
    (tmp_path / "configuration.json").write_text(json.dumps(cfg))
    (tmp_path / "pytorch_model.pt").write_bytes((model_dir / "pytorch_model.pt").read_bytes())
    with pytest.raises(CheckpointError, match=r"query_feat\.weight \(checkpoint \(12, 32\)"):
        load_model(tmp_path)
