"""M2FP configuration as frozen dataclasses; defaults are the released R101 checkpoint.

`M2FPConfig.from_modelscope` / `.to_modelscope` convert to and from the `model` section of
ModelScope's `configuration.json`. Only `m2fp.build` turns a config into module arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

CIHP_CLASS_NAMES: tuple[str, ...] = (
    "Background", "Hat", "Hair", "Gloves", "Sunglasses", "UpperClothes", "Dress", "Coat",
    "Socks", "Pants", "Torso-skin", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm",
    "Left-leg", "Right-leg", "Left-shoe", "Right-shoe", "Human",
)  # fmt: skip

PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class BackboneConfig:
    """DeepLab ResNet (detectron2 `projects/DeepLab` layout)."""

    depth: int = 101
    num_groups: int = 1
    width_per_group: int = 64
    stem_out_channels: int = 128
    res2_out_channels: int = 256
    stride_in_1x1: bool = False
    res4_dilation: int = 1
    res5_dilation: int = 1
    res5_multi_grid: tuple[int, ...] = (1, 1, 1)
    norm: str = "BN"
    out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5")


@dataclass(frozen=True)
class PixelDecoderConfig:
    """Multi-scale deformable-attention pixel decoder (ModelScope `encoder` section)."""

    in_features: tuple[str, ...] = ("res2", "res3", "res4", "res5")
    transformer_in_features: tuple[str, ...] = ("res3", "res4", "res5")
    conv_dim: int = 256
    mask_dim: int = 256
    num_heads: int = 8
    dim_feedforward: int = 1024
    num_encoder_layers: int = 6
    dropout: float = 0.0
    num_points: int = 4
    common_stride: int = 4


@dataclass(frozen=True)
class DecoderConfig:
    """Masked-attention transformer decoder (ModelScope `decoder` section)."""

    num_classes: int = 21
    hidden_dim: int = 256
    num_queries: int = 100
    num_heads: int = 8
    dim_feedforward: int = 2048
    num_decoder_layers: int = 9
    pre_norm: bool = False
    mask_dim: int = 256
    enforce_input_project: bool = False


@dataclass(frozen=True)
class M2FPConfig:
    """The whole model. `class_names` has `num_classes` entries (no-object is implicit)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    class_names: tuple[str, ...] = CIHP_CLASS_NAMES
    num_parsing: int = 20
    single_human: bool = False
    parsing_ins_score_thr: float = 0.3
    parsing_on: bool = True
    semantic_on: bool = False
    sem_seg_postprocess_before_inference: bool = True
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN
    pixel_std: tuple[float, float, float] = PIXEL_STD
    size_divisibility: int = 32

    def __post_init__(self) -> None:
        if len(self.class_names) != self.decoder.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for num_classes={self.decoder.num_classes}"
            )

    @classmethod
    def r101(cls) -> M2FPConfig:
        """The released `damo/cv_resnet101_image-multiple-human-parsing` model."""
        return cls()

    @classmethod
    def tiny(cls) -> M2FPConfig:
        """The tiny architecture of `tests/fixtures/m2fp/tiny_reference` (176,254 parameters)."""
        return cls(
            backbone=BackboneConfig(
                depth=50, width_per_group=4, stem_out_channels=16, res2_out_channels=16
            ),
            pixel_decoder=PixelDecoderConfig(
                conv_dim=32, mask_dim=32, num_heads=2, dim_feedforward=64, num_encoder_layers=2
            ),
            decoder=DecoderConfig(
                hidden_dim=32,
                num_queries=12,
                num_heads=2,
                dim_feedforward=64,
                num_decoder_layers=3,
                mask_dim=32,
            ),
        )

    @classmethod
    def from_modelscope(cls, d: dict[str, Any]) -> M2FPConfig:
        """Build from a parsed `configuration.json` (whole file or its `model` section).

        Raises:
            ValueError: a field has the wrong type or the model type is not `m2fp`.
        """
        m = d.get("model", d)
        if not isinstance(m, dict):
            raise ValueError("configuration 'model' section must be an object")
        if m.get("type", "m2fp") != "m2fp":
            raise ValueError(f"model type {m.get('type')!r} is not 'm2fp'")
        b, e, dec = m.get("backbone", {}), m.get("encoder", {}), m.get("decoder", {})
        defaults = cls()
        bb = replace(
            defaults.backbone,
            **{k: _tuple(v) for k, v in b.items() if k in BackboneConfig.__dataclass_fields__},
        )
        enc_map = {
            "transformer_dropout": "dropout",
            "transformer_nheads": "num_heads",
            "transformer_dim_feedforward": "dim_feedforward",
            "transformer_enc_layers": "num_encoder_layers",
        }
        pd = replace(
            defaults.pixel_decoder,
            **{
                enc_map.get(k, k): _tuple(v)
                for k, v in e.items()
                if enc_map.get(k, k) in PixelDecoderConfig.__dataclass_fields__
            },
        )
        dec_map = {"nheads": "num_heads", "dec_layers": "num_decoder_layers"}
        dc = replace(
            defaults.decoder,
            **{
                dec_map.get(k, k): v
                for k, v in dec.items()
                if dec_map.get(k, k) in DecoderConfig.__dataclass_fields__
            },
        )
        top = {
            k: m[k]
            for k in (
                "num_parsing",
                "single_human",
                "parsing_ins_score_thr",
                "parsing_on",
                "semantic_on",
                "sem_seg_postprocess_before_inference",
            )
            if k in m
        }
        names = tuple(m.get("classes", CIHP_CLASS_NAMES))
        return cls(backbone=bb, pixel_decoder=pd, decoder=dc, class_names=names, **top)

    def to_modelscope(self) -> dict[str, Any]:
        """The whole `configuration.json` content for this config."""
        b, e, d = self.backbone, self.pixel_decoder, self.decoder
        return {
            "framework": "pytorch",
            "task": "image-segmentation",
            "pipeline": {"type": "m2fp-image-human-parsing"},
            "model": {
                "type": "m2fp",
                "pretrained": True,
                "backbone": {
                    "out_features": list(b.out_features),
                    "depth": b.depth,
                    "num_groups": b.num_groups,
                    "width_per_group": b.width_per_group,
                    "norm": b.norm,
                    "stem_out_channels": b.stem_out_channels,
                    "res2_out_channels": b.res2_out_channels,
                    "stride_in_1x1": b.stride_in_1x1,
                    "res4_dilation": b.res4_dilation,
                    "res5_dilation": b.res5_dilation,
                    "res5_multi_grid": list(b.res5_multi_grid),
                },
                "encoder": {
                    "in_features": list(e.in_features),
                    "transformer_dropout": e.dropout,
                    "transformer_nheads": e.num_heads,
                    "transformer_dim_feedforward": e.dim_feedforward,
                    "transformer_enc_layers": e.num_encoder_layers,
                    "conv_dim": e.conv_dim,
                    "mask_dim": e.mask_dim,
                    "transformer_in_features": list(e.transformer_in_features),
                    "common_stride": e.common_stride,
                },
                "decoder": {
                    "num_classes": d.num_classes,
                    "hidden_dim": d.hidden_dim,
                    "num_queries": d.num_queries,
                    "nheads": d.num_heads,
                    "dim_feedforward": d.dim_feedforward,
                    "dec_layers": d.num_decoder_layers,
                    "pre_norm": d.pre_norm,
                    "mask_dim": d.mask_dim,
                    "enforce_input_project": d.enforce_input_project,
                },
                "classes": list(self.class_names),
                "num_parsing": self.num_parsing,
                "single_human": self.single_human,
                "parsing_ins_score_thr": self.parsing_ins_score_thr,
                "parsing_on": self.parsing_on,
                "semantic_on": self.semantic_on,
                "sem_seg_postprocess_before_inference": self.sem_seg_postprocess_before_inference,
            },
        }


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v
