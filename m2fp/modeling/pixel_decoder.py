"""Multi-scale deformable-attention pixel decoder (encoder on res3..res5, FPN to stride 4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from m2fp.modeling.backbone import ConvNorm
from m2fp.modeling.deform_attn import MSDeformAttn
from m2fp.modeling.position_encoding import PositionEmbeddingSine


class DeformableEncoderLayer(nn.Module):
    """Post-norm: x = norm1(x + deform_attn(x + pos)); x = norm2(x + FFN(x))."""

    def __init__(
        self,
        *,
        d_model: int,
        dim_feedforward: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(
            embed_dim=d_model, num_heads=num_heads, num_levels=num_levels, num_points=num_points
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """src, pos (N, S, C); reference_points (N, S, L, 2) → (N, S, C)."""
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src), inplace=True)))


class DeformableEncoder(nn.Module):
    def __init__(self, *, num_layers: int, **layer_kwargs: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers)
        )

    @staticmethod
    def reference_points(
        spatial_shapes: list[tuple[int, int]], batch: int, device: torch.device
    ) -> torch.Tensor:
        """Pixel centres of every level, normalised: (batch, S, L, 2) as (x, y)."""
        refs = []
        for h, w in spatial_shapes:
            ys, xs = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                indexing="ij",
            )
            refs.append(torch.stack((xs.reshape(-1) / w, ys.reshape(-1) / h), -1))
        ref = torch.cat(refs, 0)  # (S, 2); all valid ratios are 1 (no padding mask)
        return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        ref = self.reference_points(spatial_shapes, src.shape[0], src.device).to(src.dtype)
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes)
        return src


class EncoderOnlyTransformer(nn.Module):
    """Holds `level_embed` and `encoder` (checkpoint prefix `pixel_decoder.transformer`)."""

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        num_layers: int,
        dim_feedforward: int,
        num_levels: int,
        num_points: int,
    ) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(num_levels, d_model))
        nn.init.normal_(self.level_embed)
        self.encoder = DeformableEncoder(
            num_layers=num_layers,
            d_model=d_model,
            dim_feedforward=dim_feedforward,
            num_heads=num_heads,
            num_levels=num_levels,
            num_points=num_points,
        )

    def forward(
        self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """srcs, pos_embeds: L maps (N, C, H_l, W_l) → memory (N, S, C) and the L shapes."""
        shapes = [(int(s.shape[2]), int(s.shape[3])) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                for lvl, p in enumerate(pos_embeds)
            ],
            1,
        )
        return self.encoder(src_flat, pos_flat, shapes), shapes


class MSDeformAttnPixelDecoder(nn.Module):
    """Returns mask features (stride common_stride) and the multi-scale encoder outputs."""

    def __init__(
        self,
        *,
        in_channels: dict[str, int],
        in_strides: dict[str, int],
        transformer_in_features: tuple[str, ...],
        conv_dim: int,
        mask_dim: int,
        num_heads: int,
        dim_feedforward: int,
        num_encoder_layers: int,
        num_points: int,
        common_stride: int,
    ) -> None:
        super().__init__()
        # coarsest first: res5, res4, res3
        self.transformer_in_features = sorted(
            transformer_in_features, key=lambda f: in_strides[f], reverse=True
        )
        n_levels = len(self.transformer_in_features)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[f], conv_dim, 1), nn.GroupNorm(32, conv_dim))
            for f in self.transformer_in_features
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.transformer = EncoderOnlyTransformer(
            d_model=conv_dim,
            num_heads=num_heads,
            num_layers=num_encoder_layers,
            dim_feedforward=dim_feedforward,
            num_levels=n_levels,
            num_points=num_points,
        )
        self.pe_layer = PositionEmbeddingSine(num_pos_feats=conv_dim // 2, normalize=True)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        self.num_feature_levels = min(n_levels, 3)
        # set by m2fp.optimize: hand the encoder outputs on as channels-last views
        self.channels_last = False
        # FPN levels finer than the finest transformer level, down to common_stride
        min_stride = min(in_strides[f] for f in self.transformer_in_features)
        n_fpn = int(math.log2(min_stride) - math.log2(common_stride))
        fine = sorted(
            (f for f in in_channels if in_strides[f] < min_stride), key=lambda f: in_strides[f]
        )[:n_fpn]
        self.fpn_features = fine[::-1]  # coarse to fine
        for idx, f in enumerate(self.fpn_features):
            lateral = ConvNorm(
                in_channels[f], conv_dim, kernel_size=1, norm=nn.GroupNorm(32, conv_dim)
            )
            output = ConvNorm(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                norm=nn.GroupNorm(32, conv_dim),
                relu=True,
            )
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            features: backbone maps {"res2": (N,C2,H/4,W/4), ..., "res5": (N,C5,H/32,W/32)}.

        Returns:
            mask_features (N, mask_dim, H/4, W/4) and the encoder outputs at strides
            32, 16, 8: list of (N, conv_dim, H_l, W_l).
        """
        srcs, pos = [], []
        for idx, f in enumerate(self.transformer_in_features):
            x = features[f]
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, shapes = self.transformer(srcs, pos)
        n, _, c = memory.shape
        levels = zip(memory.split([h * w for h, w in shapes], 1), shapes, strict=True)
        if self.channels_last:
            # (N, H*W, C) -> (N, C, H, W) as a channels-last view, no copy
            outs = [m.view(n, h, w, c).permute(0, 3, 1, 2) for m, (h, w) in levels]
        else:
            outs = [m.transpose(1, 2).reshape(n, c, h, w) for m, (h, w) in levels]
        for idx, f in enumerate(self.fpn_features):
            lateral = getattr(self, f"adapter_{idx + 1}")(features[f])
            up = F.interpolate(
                outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            outs.append(getattr(self, f"layer_{idx + 1}")(lateral + up))
        return self.mask_features(outs[-1]), outs[: self.num_feature_levels]
