"""The M2FP meta-architecture: normalise, pad to /32, backbone, pixel decoder, predictor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from m2fp.modeling.backbone import DeepLabResNet
from m2fp.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from m2fp.modeling.transformer_decoder import MaskedAttentionDecoder


@dataclass
class M2FPOutput:
    """Raw predictions. class_logits (B, Q, K+1) (last = no object); mask_logits
    (B, Q, Hpad/4, Wpad/4). aux_* hold the earlier layers' predictions (oldest first) when
    `forward(..., return_aux=True)`, else empty."""

    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    padded_hw: tuple[int, int]
    aux_class_logits: list[torch.Tensor]
    aux_mask_logits: list[torch.Tensor]


class SemSegHead(nn.Module):
    """Container giving the checkpoint prefix `sem_seg_head.{pixel_decoder,predictor}`."""

    def __init__(
        self, *, pixel_decoder: MSDeformAttnPixelDecoder, predictor: MaskedAttentionDecoder
    ) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor


class M2FP(nn.Module):
    """Mask2Former for parsing. `config` is the `M2FPConfig` it was built from (set by
    `m2fp.build.build_model`)."""

    def __init__(
        self,
        *,
        backbone: DeepLabResNet,
        pixel_decoder: MSDeformAttnPixelDecoder,
        predictor: MaskedAttentionDecoder,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        size_divisibility: int = 32,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = SemSegHead(pixel_decoder=pixel_decoder, predictor=predictor)
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), False)
        self.config = None
        # Inference settings, set by m2fp.optimize.optimize_for_inference; the defaults are
        # the reference computation.
        self.channels_last = False
        self.autocast_dtype: torch.dtype | None = None

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) RGB 0..255 → normalised, zero-padded bottom/right to a multiple of 32."""
        x = (images - self.pixel_mean) / self.pixel_std
        d = self.size_divisibility
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % d, (-w) % d
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
        return x

    def forward(self, images: torch.Tensor, *, return_aux: bool = False) -> M2FPOutput:
        """images: float (B, 3, H, W) RGB in 0..255, any H, W (same size within a batch)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
        device = self.pixel_mean.device
        if images.device != device:
            if device.type == "cuda" and images.device.type == "cpu":
                images = images.pin_memory()  # lets the copy below run asynchronously
            images = images.to(device, non_blocking=True)
        x = self.preprocess(images.to(self.pixel_mean.dtype))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        ):
            features = self.backbone(x)
            mask_features, multi_scale = self.sem_seg_head.pixel_decoder(features)
            classes, masks = self.sem_seg_head.predictor(multi_scale, mask_features, aux=return_aux)
        if self.autocast_dtype is not None:
            classes = [c.float() for c in classes]
            masks = [m.float() for m in masks]
        return M2FPOutput(
            class_logits=classes[-1],
            mask_logits=masks[-1],
            padded_hw=(int(x.shape[-2]), int(x.shape[-1])),
            aux_class_logits=classes[:-1] if return_aux else [],
            aux_mask_logits=masks[:-1] if return_aux else [],
        )
