"""Reading and strictly loading M2FP state dicts (ModelScope `{'model': sd}` format)."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from typing import BinaryIO

import torch
from torch import nn


class CheckpointError(Exception):
    """The weights cannot be read or do not fit the model."""


class ModelDirError(CheckpointError):
    """The model directory is missing, incomplete or malformed."""


def _short(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def read_state_dict(fileobj: BinaryIO) -> dict[str, torch.Tensor]:
    """Read a checkpoint from a binary file object with `torch.load(weights_only=True)`.

    Accepts `{'model': state_dict}` (ModelScope / detectron2) or a bare state dict; tensors
    are mapped to CPU.

    Raises:
        CheckpointError: the bytes are not a readable torch checkpoint of tensors.
    """
    try:
        obj = torch.load(fileobj, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            OSError) as exc:  # fmt: skip
        raise CheckpointError(f"cannot read checkpoint (corrupt or truncated?): {exc}") from exc
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(
            f"checkpoint entries that are not tensors: {_short([str(k) for k in bad])}"
        )
    return dict(obj)


def remap_keys(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapt a soeaver/M2FP (detectron2) checkpoint: drop the loss's `criterion.*` buffers and
    add the BN `num_batches_tracked` counters it lacks (where the BN's
    running_mean is present). Other keys pass through unchanged."""
    out = {k: v for k, v in sd.items() if not k.startswith("criterion.")}
    for key, value in model.state_dict().items():
        stem = key.removesuffix("num_batches_tracked")
        if stem != key and key not in out and stem + "running_mean" in out:
            out[key] = torch.zeros_like(value)
    return out


def load_state_dict_strict(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Load `sd` into `model` requiring identical keys and shapes (after `remap_keys`).

    Raises:
        CheckpointError: naming the missing, unexpected and mis-shaped keys.
    """
    sd = remap_keys(sd, model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shaped = [
        f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_short(unexpected)}")
    if shaped:
        problems.append(f"{len(shaped)} keys with the wrong shape: {_short(shaped, 4)}")
    if problems:
        raise CheckpointError("checkpoint does not match the model: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
