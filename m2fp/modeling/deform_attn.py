"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch via `grid_sample`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]] | torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinearly sample every level at the given points and sum them with attention weights.

    Args:
        value: (N, S, M, D) values of all levels flattened row-major, S = sum(H_l * W_l).
        spatial_shapes: L pairs (H_l, W_l).
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1]; pixel centres
            are at (i + 0.5) / size; points outside read zeros.
        attention_weights: (N, Lq, M, L, P).

    Returns:
        (N, Lq, M * D).
    """
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    value_list = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = value_list[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        # (N*M, D, Lq, P)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (N, Lq, M, L, P) -> (N*M, 1, Lq, L*P)
    attn = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, n_levels * n_points)
    # (N*M, D, Lq, L*P) summed over points -> (N, M*D, Lq)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * attn).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module; keys `sampling_offsets`, `attention_weights`,
    `value_proj`, `output_proj` as in the official checkpoint."""

    def __init__(self, *, embed_dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        # Initial offsets point in num_heads evenly spread directions, growing with the point.
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (
            2.0 * math.pi / self.num_heads
        )
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_in: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """
        Args:
            query: (N, Lq, C) queries (with positional encoding added).
            reference_points: (N, Lq, L, 2) normalised (x, y) per level.
            value_in: (N, S, C) flattened multi-level features.
            spatial_shapes: L pairs (H_l, W_l), sum(H_l * W_l) = S.

        Returns:
            (N, Lq, C).
        """
        n, lq, _ = query.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        # (N, S, heads, C/heads)
        value = self.value_proj(value_in).view(n, value_in.shape[1], m, self.embed_dim // m)
        # (N, Lq, heads, levels, points, 2)
        offsets = self.sampling_offsets(query).view(n, lq, m, lv, p, 2)
        # (N, Lq, heads, levels, points), softmax over levels x points
        weights = self.attention_weights(query).view(n, lq, m, lv * p).softmax(-1)
        weights = weights.view(n, lq, m, lv, p)
        # offsets are in pixels of each level: normalise by (W_l, H_l)
        normalizer = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normalizer[None, None, None, :, None, :]
        )
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))
