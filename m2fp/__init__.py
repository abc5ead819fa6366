"""M2FP human parsing in pure PyTorch: the model, a parser with per-person results, and an
inference engine for servers.

    import m2fp
    parser = m2fp.Parser("models/cv_resnet101_image-multiple-human-parsing")
    result = parser.parse(rgb_uint8_array)      # .semantic, .instances, .persons

Names are imported on first use, so `import m2fp` stays cheap and never touches CUDA.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "build_model": "m2fp.build",
    "load_model": "m2fp.build",
    "save_model_dir": "m2fp.build",
    "M2FPConfig": "m2fp.config",
    "CheckpointError": "m2fp.checkpoint",
    "ModelDirError": "m2fp.checkpoint",
    "Parser": "m2fp.parser",
    "ParsingResult": "m2fp.parser",
    "Instance": "m2fp.parser",
    "Person": "m2fp.parser",
    "PreparedImage": "m2fp.parser",
    "InferenceEngine": "m2fp.engine",
    "MicroBatcher": "m2fp.batching",
    "QueueFull": "m2fp.batching",
    "EngineNotReady": "m2fp.batching",
    "CLASS_NAMES": "m2fp.labels",
    "NUM_CLASSES": "m2fp.labels",
    "HUMAN_CLASS_ID": "m2fp.labels",
    "PALETTE": "m2fp.labels",
    "color_hex": "m2fp.labels",
    "class_table": "m2fp.labels",
}

__all__ = [
    "build_model",
    "load_model",
    "save_model_dir",
    "M2FPConfig",
    "CheckpointError",
    "ModelDirError",
    "Parser",
    "ParsingResult",
    "Instance",
    "Person",
    "PreparedImage",
    "InferenceEngine",
    "MicroBatcher",
    "QueueFull",
    "EngineNotReady",
    "CLASS_NAMES",
    "NUM_CLASSES",
    "HUMAN_CLASS_ID",
    "PALETTE",
    "color_hex",
    "class_table",
]

if TYPE_CHECKING:
    from m2fp.batching import EngineNotReady, MicroBatcher, QueueFull
    from m2fp.build import build_model, load_model, save_model_dir
    from m2fp.checkpoint import CheckpointError, ModelDirError
    from m2fp.config import M2FPConfig
    from m2fp.engine import InferenceEngine
    from m2fp.labels import (
        CLASS_NAMES,
        HUMAN_CLASS_ID,
        NUM_CLASSES,
        PALETTE,
        class_table,
        color_hex,
    )
    from m2fp.parser import Instance, Parser, ParsingResult, Person, PreparedImage


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'm2fp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
