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


def ms_deform_attn_gather(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]] | torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """`ms_deform_attn` computed as one weighted gather; same arguments, same result.

    Each output row is a sum of value rows (4 bilinear corners x levels x points) weighted by
    bilinear weight x attention weight, which `F.embedding_bag(mode="sum")` computes without
    materialising the (N*M, D, Lq, L*P) samples that grid_sample + multiply + sum need.
    """
    shapes = [(int(h), int(w)) for h, w in spatial_shapes]
    xs, ys = [], []
    for lvl, (h, w) in enumerate(shapes):
        # normalised (pixel centres at (i + 0.5) / size) -> pixel coordinates, centres at i
        xs.append(sampling_locations[:, :, :, lvl, :, 0] * w - 0.5)
        ys.append(sampling_locations[:, :, :, lvl, :, 1] * h - 0.5)
    return deform_gather_pixels(value, shapes, xs, ys, attention_weights)


def deform_gather_pixels(
    value: torch.Tensor,
    shapes: list[tuple[int, int]],
    xs: list[torch.Tensor],
    ys: list[torch.Tensor],
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinear samples at pixel coordinates, summed with attention weights, as one gather.

    Each level's values are copied into a map with a one-pixel border of zeros, and the
    coordinates are clamped to that border: a corner outside the image then reads a zero,
    which is grid_sample's zero padding, and needs no validity masks or per-corner clamping.

    Args:
        value: (N, S, M, D), levels flattened row-major, S = sum(H_l * W_l).
        shapes: L pairs (H_l, W_l) as Python ints (no tensor has to come from the host).
        xs, ys: L tensors (N, Lq, M, P): pixel coordinates in level l, pixel (i, j) at (j, i).
        attention_weights: (N, Lq, M, L, P).

    Returns:
        (N, Lq, M * D).
    """
    n, _, m, d = value.shape
    lq, n_levels, n_points = attention_weights.shape[1], len(shapes), attention_weights.shape[-1]
    padded_sizes = [(h + 2) * (w + 2) for h, w in shapes]
    # spare zero pixels at the end: the right/bottom neighbours of a corner clamped onto the
    # last level's bottom-right border have weight 0 but must still be valid rows
    s_pad = sum(padded_sizes) + shapes[-1][1] + 3
    table = value.new_zeros(n, s_pad, m, d)
    start = 0
    for (h, w), level in zip(shapes, value.split([h * w for h, w in shapes], 1), strict=True):
        padded = table[:, start : start + (h + 2) * (w + 2)].view(n, h + 2, w + 2, m, d)
        padded[:, 1 : h + 1, 1 : w + 1] = level.view(n, h, w, m, d)
        start += (h + 2) * (w + 2)
    index_dtype = torch.int32 if n * s_pad * m < 2**31 else torch.int64
    # row of `table` viewed as (N*S_pad*M, D): (image * S_pad + pixel) * M + head
    base = torch.arange(n, device=value.device, dtype=index_dtype).view(n, 1, 1, 1) * (s_pad * m)
    base = base + torch.arange(m, device=value.device, dtype=index_dtype).view(1, 1, m, 1)
    # (N, Lq, M, L, P, 4 corners: top-left, top-right, bottom-left, bottom-right)
    bags = torch.empty((n, lq, m, n_levels, n_points, 4), dtype=index_dtype, device=value.device)
    bag_weights = torch.empty(bags.shape, dtype=value.dtype, device=value.device)
    # writing into slices (out=) saves a copy, but autograd cannot follow it
    differentiable = torch.is_grad_enabled() and (
        attention_weights.requires_grad or any(t.requires_grad for t in xs + ys)
    )
    level_weights = []
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        x = xs[lvl].clamp(-1, w)
        y = ys[lvl].clamp(-1, h)
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        # padded pixel of the top-left corner: (y0 + 1) * (w + 2) + (x0 + 1)
        corner = torch.add(x0.to(index_dtype), y0.to(index_dtype), alpha=w + 2)
        top_left = (corner + (start + w + 3)) * m + base
        for c, step in enumerate((0, 1, w + 2, w + 3)):
            torch.add(top_left, step * m, out=bags[:, :, :, lvl, :, c])
        attn = attention_weights[:, :, :, lvl]
        bottom = attn * fy
        top = attn - bottom
        if differentiable:
            top_right, bottom_right = top * fx, bottom * fx
            corners = (top - top_right, top_right, bottom - bottom_right, bottom_right)
            level_weights.append(torch.stack(corners, -1))
        else:
            for c, row in enumerate((top, top, bottom, bottom)):
                out = bag_weights[:, :, :, lvl, :, c]
                torch.mul(row, fx, out=out)  # right corners: row * fx
                if c % 2 == 0:  # left corners: row * (1 - fx)
                    torch.sub(row, out, out=out)
        start += (h + 2) * (w + 2)
    if differentiable:
        bag_weights = torch.stack(level_weights, 3)
    out = F.embedding_bag(
        bags.view(n * lq * m, -1),
        table.view(n * s_pad * m, d),
        per_sample_weights=bag_weights.view(n * lq * m, -1),
        mode="sum",
    )
    return out.view(n, lq, m * d)


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
        # "grid_sample" (the reference) or "gather" (ms_deform_attn_gather, same result within
        # float rounding, several times faster on CPU); set by m2fp.optimize
        self.sampler = "grid_sample"
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
        device_type = query.device.type
        if torch.is_autocast_enabled(device_type):
            # sampling positions and weights stay float32 under autocast, as Mask2Former runs
            # this encoder: in bfloat16 a coordinate near 100 pixels is off by up to 0.25 pixel
            with torch.autocast(device_type, enabled=False):
                offsets = self.sampling_offsets(query.float())
                logits = self.attention_weights(query.float())
        else:
            offsets = self.sampling_offsets(query)
            logits = self.attention_weights(query)
        # (N, Lq, heads, levels, points, 2)
        offsets = offsets.view(n, lq, m, lv, p, 2)
        # (N, Lq, heads, levels, points), softmax over levels x points
        logits = logits.view(n, lq, m, lv * p)
        if self.sampler == "gather":
            # torch's softmax kernel is slow on a last dimension of only L*P (12) values
            e = (logits - logits.amax(-1, keepdim=True)).exp()
            weights = (e / e.sum(-1, keepdim=True)).view(n, lq, m, lv, p)
            # pixel coordinates per level straight from the offsets (which are in pixels),
            # with Python-int sizes: no normaliser tensor, so no host-to-device copy
            xs, ys = [], []
            for lvl, (h, w) in enumerate(spatial_shapes):
                ref = reference_points[:, :, None, lvl, None, :]  # (N, Lq, 1, 1, 2)
                xs.append(offsets[:, :, :, lvl, :, 0] + (ref[..., 0] * w - 0.5))
                ys.append(offsets[:, :, :, lvl, :, 1] + (ref[..., 1] * h - 0.5))
            shapes = [(int(h), int(w)) for h, w in spatial_shapes]
            return self.output_proj(deform_gather_pixels(value, shapes, xs, ys, weights))
        weights = logits.softmax(-1).view(n, lq, m, lv, p)
        # offsets are in pixels of each level: normalise by (W_l, H_l)
        normalizer = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / normalizer[None, None, None, :, None, :]
        )
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))
