"""The one place where an `M2FPConfig` becomes modules; model directory load/save."""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

import torch

from m2fp.checkpoint import CheckpointError, ModelDirError, load_state_dict_strict, read_state_dict
from m2fp.config import M2FPConfig
from m2fp.modeling.backbone import DeepLabResNet
from m2fp.modeling.m2fp import M2FP
from m2fp.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from m2fp.modeling.transformer_decoder import MaskedAttentionDecoder

CONFIG_FILE = "configuration.json"
WEIGHTS_FILE = "pytorch_model.pt"
_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def build_model(cfg: M2FPConfig) -> M2FP:
    """Build an M2FP with freshly initialised weights, in eval mode, attribute `.config`."""
    b, p, d = cfg.backbone, cfg.pixel_decoder, cfg.decoder
    if b.norm not in ("BN", "SyncBN", "nnSyncBN", "FrozenBN"):
        raise ValueError(f"unsupported backbone norm {b.norm!r}")
    if d.pre_norm:
        raise ValueError("pre_norm decoders are not supported (the released model is post-norm)")
    if len(p.transformer_in_features) != 3:
        raise ValueError("the decoder expects exactly 3 transformer_in_features")
    backbone = DeepLabResNet(
        depth=b.depth,
        num_groups=b.num_groups,
        width_per_group=b.width_per_group,
        stem_out_channels=b.stem_out_channels,
        res2_out_channels=b.res2_out_channels,
        stride_in_1x1=b.stride_in_1x1,
        res4_dilation=b.res4_dilation,
        res5_dilation=b.res5_dilation,
        res5_multi_grid=b.res5_multi_grid,
        out_features=b.out_features,
    )
    in_features = [f for f in p.in_features if f in backbone.out_channels]
    pixel_decoder = MSDeformAttnPixelDecoder(
        in_channels={f: backbone.out_channels[f] for f in in_features},
        in_strides={f: _STRIDES[f] for f in in_features},
        transformer_in_features=p.transformer_in_features,
        conv_dim=p.conv_dim,
        mask_dim=p.mask_dim,
        num_heads=p.num_heads,
        dim_feedforward=p.dim_feedforward,
        num_encoder_layers=p.num_encoder_layers,
        num_points=p.num_points,
        common_stride=p.common_stride,
    )
    predictor = MaskedAttentionDecoder(
        in_channels=p.conv_dim,
        num_classes=d.num_classes,
        hidden_dim=d.hidden_dim,
        num_queries=d.num_queries,
        num_heads=d.num_heads,
        dim_feedforward=d.dim_feedforward,
        num_layers=d.num_decoder_layers,
        mask_dim=d.mask_dim,
        enforce_input_project=d.enforce_input_project,
    )
    model = M2FP(
        backbone=backbone,
        pixel_decoder=pixel_decoder,
        predictor=predictor,
        pixel_mean=cfg.pixel_mean,
        pixel_std=cfg.pixel_std,
        size_divisibility=cfg.size_divisibility,
    )
    model.config = cfg
    return model.eval()


def read_config(model_dir: str | Path) -> M2FPConfig:
    """Read `configuration.json` of a ModelScope-style model directory.

    Raises:
        ModelDirError: missing directory/file, malformed JSON or invalid fields.
    """
    directory = Path(model_dir)
    if not directory.is_dir():
        raise ModelDirError(f"model directory {directory} does not exist")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelDirError(f"{path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return M2FPConfig.from_modelscope(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{path} is not valid JSON: {exc}") from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelDirError(f"{path} has an invalid model configuration: {exc}") from exc


def load_model(
    model_dir: str | Path, *, device: str | torch.device = "cpu", weights: BinaryIO | None = None
) -> M2FP:
    """Build the model of `model_dir/configuration.json` and load its weights strictly.

    Args:
        model_dir: directory with configuration.json (and pytorch_model.pt unless `weights`).
        device: where to put the model.
        weights: a binary file object with the checkpoint (e.g. decrypted bytes in a BytesIO);
            when None, `model_dir/pytorch_model.pt` is read.

    Returns:
        The model in eval mode on `device`.

    Raises:
        ModelDirError: bad directory, configuration or missing weights file.
        CheckpointError: unreadable checkpoint or keys/shapes that do not match.
    """
    cfg = read_config(model_dir)
    model = build_model(cfg)
    if weights is not None:
        sd = read_state_dict(weights)
    else:
        path = Path(model_dir) / WEIGHTS_FILE
        if not path.is_file():
            hint = ""
            if path.with_name(WEIGHTS_FILE + ".enc").is_file():
                hint = (
                    f" ({WEIGHTS_FILE}.enc is present: it is encrypted and needs the model key;"
                    " decrypt it with security.model_crypto and pass weights=)"
                )
            raise ModelDirError(f"{path} is missing{hint}")
        try:
            with path.open("rb") as fh:
                sd = read_state_dict(fh)
        except OSError as exc:
            raise ModelDirError(f"{path} cannot be opened: {exc.strerror or exc}") from exc
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
    load_state_dict_strict(model, sd)
    return model.to(device).eval()


def save_model_dir(model: M2FP, directory: str | Path) -> Path:
    """Write `configuration.json` and `pytorch_model.pt` (`{'model': state_dict}`) into
    `directory` (created if needed) and return its path."""
    if model.config is None:
        raise ValueError("model has no .config; build it with build_model")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(model.config.to_modelscope(), indent=4) + "\n")
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"model": sd}, out / WEIGHTS_FILE)
    return out
