"""ms_deform_attn (grid_sample) against a naive per-point bilinear loop in float64."""

from __future__ import annotations

import math

import pytest
import torch

from m2fp.modeling.deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_gather


def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img (D, H, W); (x, y) normalised with pixel centres at (i + 0.5) / size; zeros outside."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx]
    return out


def _naive(value, shapes, locations, weights) -> torch.Tensor:
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = locations.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(n, lq, m, d, dtype=value.dtype)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    # (H*W, D) -> (D, H, W)
                    img = value[b, starts[lvl] : starts[lvl + 1], head].T.reshape(d, h, w)
                    for p in range(n_points):
                        x, y = locations[b, q, head, lvl, p].tolist()
                        out[b, q, head] += weights[b, q, head, lvl, p] * _bilinear(img, x, y)
    return out.reshape(n, lq, m * d)


@pytest.mark.parametrize("sampler", [ms_deform_attn, ms_deform_attn_gather], ids=["grid", "gather"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_loop_float64(seed: int, sampler) -> None:
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 5), (6, 4), (7, 9)]
    n, m, d, lq, p = 2, 2, 3, 5, 4
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    # points up to 0.4 outside [0, 1] on each side: zero padding and clamped corners
    locations = torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64)
    locations = locations * 1.8 - 0.4
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g, dtype=torch.float64)
    got = sampler(value, shapes, locations, weights)
    want = _naive(value, shapes, locations, weights)
    assert got.shape == (n, lq, m * d)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_pixel_centre_samples_exact_value() -> None:
    # one level, one head, one point at the centre of pixel (row 1, col 2) with weight 1
    value = torch.arange(12, dtype=torch.float64).view(1, 12, 1, 1)
    loc = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn(value, [(3, 4)], loc, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    assert out.item() == pytest.approx(6.0)


def test_module_output_shape_and_weights_normalised() -> None:
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dim=8, num_heads=2, num_levels=2, num_points=3).double()
    shapes = [(4, 4), (2, 2)]
    query = torch.randn(1, 20, 8, dtype=torch.float64)
    ref = torch.rand(1, 20, 2, 2, dtype=torch.float64)
    out = attn(query, ref, query, shapes)
    assert out.shape == (1, 20, 8)
    # a constant value map with value_proj/output_proj = identity returns that constant
    with torch.no_grad():
        for lin in (attn.value_proj, attn.output_proj):
            lin.weight.copy_(torch.eye(8))
            lin.bias.zero_()
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.zero_()
    ones = torch.ones(1, 20, 8, dtype=torch.float64)
    centres = torch.tensor([[0.375, 0.375], [0.25, 0.25]], dtype=torch.float64)
    out = attn(query, centres.expand(1, 20, 2, 2), ones, shapes)
    torch.testing.assert_close(out, ones, atol=1e-12, rtol=0)
