"""m2fp.optimize: the optimized copy computes what the reference model computes (1e-4), on the
tiny configuration and on ModelScope's tiny reference, and leaves the original alone."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from m2fp.build import load_model
from m2fp.modeling.backbone import ConvNorm
from m2fp.modeling.deform_attn import MSDeformAttn
from m2fp.modeling.m2fp import M2FP
from m2fp.optimize import (
    GroupNormChannelsLast,
    OneDNNLinear,
    cpu_supports_bf16,
    fold_batchnorm_,
    onednn_linear_available,
    optimize_for_inference,
)
from tests.support.model_factory import make_tiny_model
from tests.support.paths import TINY_REFERENCE

ATOL = 1e-4
CASES = torch.load(TINY_REFERENCE / "cases.pt", weights_only=True)["cases"]


def _randomise_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial running statistics, so folding them is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=g))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=g))


@pytest.fixture(scope="module")
def tiny_pair() -> tuple[M2FP, M2FP]:
    model = make_tiny_model(0)
    _randomise_batchnorm(model, 1)
    return model, optimize_for_inference(model)


def _image(seed: int, b: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g).float()


@pytest.mark.parametrize(("b", "h", "w"), [(1, 64, 64), (1, 61, 83), (2, 96, 130), (1, 160, 100)])
def test_optimized_equals_reference_tiny(tiny_pair: tuple[M2FP, M2FP], b, h, w) -> None:
    model, fast = tiny_pair
    images = _image(h * w, b, h, w)
    with torch.inference_mode():
        want = model(images)
        got = fast(images)
    assert got.padded_hw == want.padded_hw
    assert got.class_logits.dtype == torch.float32
    torch.testing.assert_close(got.class_logits, want.class_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.mask_logits, want.mask_logits, atol=ATOL, rtol=0)
    assert got.aux_class_logits == [] and got.aux_mask_logits == []


def test_optimized_aux_outputs_equal_reference(tiny_pair: tuple[M2FP, M2FP]) -> None:
    model, fast = tiny_pair
    images = _image(3, 1, 70, 90)
    with torch.inference_mode():
        want = model(images, return_aux=True)
        got = fast(images, return_aux=True)
    assert len(got.aux_class_logits) == len(want.aux_class_logits) == 3
    for g_cls, w_cls, g_msk, w_msk in zip(
        got.aux_class_logits,
        want.aux_class_logits,
        got.aux_mask_logits,
        want.aux_mask_logits,
        strict=True,
    ):
        torch.testing.assert_close(g_cls, w_cls, atol=ATOL, rtol=0)
        torch.testing.assert_close(g_msk, w_msk, atol=ATOL, rtol=0)


def test_original_model_is_left_alone(tiny_pair: tuple[M2FP, M2FP]) -> None:
    model, fast = tiny_pair
    assert fast is not model
    assert not model.channels_last and model.autocast_dtype is None
    assert all(m.sampler == "grid_sample" for m in model.modules() if isinstance(m, MSDeformAttn))
    assert not model.sem_seg_head.predictor.fast
    norms = [m.norm for m in model.modules() if isinstance(m, ConvNorm)]
    assert norms and all(isinstance(n, nn.BatchNorm2d) for n in norms[:3])
    # the copy really is different: folded BatchNorm, gather sampler, fast decoder
    assert all(m.norm is None for m in fast.backbone.modules() if isinstance(m, ConvNorm))
    assert all(m.sampler == "gather" for m in fast.modules() if isinstance(m, MSDeformAttn))
    assert fast.sem_seg_head.predictor.fast and fast.channels_last
    assert any(isinstance(m, GroupNormChannelsLast) for m in fast.modules())
    linears = [m for m in fast.modules() if isinstance(m, OneDNNLinear)]
    assert bool(linears) == onednn_linear_available()
    assert not any(isinstance(m, OneDNNLinear) for m in model.modules())
    assert fast.config is model.config or fast.config == model.config


@pytest.mark.parametrize("channels_last", [False, True])
def test_memory_format_choice_gives_same_result(tiny_pair, channels_last: bool) -> None:
    model, _ = tiny_pair
    fast = optimize_for_inference(model, channels_last=channels_last)
    assert fast.channels_last is channels_last
    images = _image(9, 1, 64, 96)
    with torch.inference_mode():
        torch.testing.assert_close(
            fast(images).mask_logits, model(images).mask_logits, atol=ATOL, rtol=0
        )


def _reference_input(case: dict) -> tuple[torch.Tensor, dict]:
    if case["pipeline"] is None:
        return case["image"].permute(2, 0, 1).float()[None], case
    pipe = case["pipeline"]
    png = pipe["resized_image_png"].numpy().tobytes()
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).copy()
    return torch.from_numpy(image).permute(2, 0, 1).float()[None], pipe


@pytest.mark.parametrize(
    "name", [c["name"] for c in CASES] + [f"{c['name']}:pipeline" for c in CASES if c["pipeline"]]
)
def test_optimized_matches_modelscope_tiny_reference(name: str) -> None:
    fast = optimize_for_inference(load_model(TINY_REFERENCE))
    case = next(c for c in CASES if c["name"] == name.split(":")[0])
    if name.endswith(":pipeline"):
        images, want = _reference_input(case)
        want_masks = want["pred_masks_stride8"]
        stride = 8
    else:
        images, want = case["image"].permute(2, 0, 1).float()[None], case
        want_masks = case["pred_masks"]
        stride = 1
    with torch.inference_mode():
        out = fast(images, return_aux=True)
    assert out.padded_hw == tuple(want["padded_hw"])
    torch.testing.assert_close(out.class_logits, want["pred_logits"], atol=ATOL, rtol=0)
    masks = out.mask_logits[..., ::stride, ::stride]
    torch.testing.assert_close(masks, want_masks, atol=ATOL, rtol=0)
    aux = torch.stack(out.aux_class_logits)
    torch.testing.assert_close(aux, want["aux_pred_logits"], atol=ATOL, rtol=0)


def test_gather_sampler_module_equals_grid_sample_module() -> None:
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dim=16, num_heads=4, num_levels=2, num_points=3).double()
    with torch.no_grad():  # offsets large enough to reach outside the maps
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    shapes = [(5, 7), (3, 4)]
    s = sum(h * w for h, w in shapes)
    query = torch.randn(2, s, 16, dtype=torch.float64)
    ref = torch.rand(2, s, 2, 2, dtype=torch.float64)
    want = attn(query, ref, query, shapes)
    attn.sampler = "gather"
    got = attn(query, ref, query, shapes)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_fold_batchnorm_equals_conv_then_bn_float64() -> None:
    torch.manual_seed(0)
    conv = ConvNorm(4, 6, kernel_size=3, padding=1, norm=nn.BatchNorm2d(6), relu=True).double()
    _randomise_batchnorm(conv, 2)
    with torch.no_grad():
        conv.norm.weight.uniform_(0.5, 1.5)
        conv.norm.bias.normal_()
    conv.eval()
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    want = conv(x)
    assert fold_batchnorm_(conv) == 1
    assert conv.norm is None and conv.bias is not None
    torch.testing.assert_close(conv(x), want, atol=1e-12, rtol=0)


def test_fold_batchnorm_refuses_training_mode() -> None:
    conv = ConvNorm(2, 2, kernel_size=1, norm=nn.BatchNorm2d(2)).train()
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batchnorm_(conv)


def test_bad_arguments() -> None:
    model = make_tiny_model(0)
    with pytest.raises(TypeError, match="M2FP"):
        optimize_for_inference(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'fp16' is not supported on the CPU"):
        optimize_for_inference(model, dtype=torch.float16)
    with pytest.raises(ValueError, match="dtype must be"):
        optimize_for_inference(model, dtype=torch.float64)


def test_bfloat16_autocast_runs_and_returns_float32(tiny_pair: tuple[M2FP, M2FP]) -> None:
    model, _ = tiny_pair
    fast = optimize_for_inference(model, dtype=torch.bfloat16)
    images = _image(4, 1, 64, 64)
    with torch.inference_mode():
        got = fast(images)
        want = model(images)
    assert got.class_logits.dtype == got.mask_logits.dtype == torch.float32
    assert got.mask_logits.shape == want.mask_logits.shape
    assert torch.isfinite(got.mask_logits).all()
    # bf16 keeps ~3 significant digits: close to fp32, but not equal to it
    scale = want.mask_logits.abs().max()
    err = (got.mask_logits - want.mask_logits).abs().max()
    assert 0 < err < 0.25 * scale


def test_channels_last_group_norm_is_accurate_and_keeps_the_layout() -> None:
    torch.manual_seed(0)
    ref = nn.GroupNorm(8, 32)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
    norm = GroupNormChannelsLast(8, 32)
    norm.load_state_dict(ref.state_dict())
    # a large mean over a small spread: where a one-pass variance loses digits
    x = (0.3 + 0.05 * torch.randn(2, 32, 40, 56)).contiguous(memory_format=torch.channels_last)
    want = F.group_norm(x.double(), 8, ref.weight.double(), ref.bias.double(), ref.eps)
    got = norm(x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    # an NCHW input takes torch's own kernel
    torch.testing.assert_close(norm(x.contiguous()), ref(x.contiguous()), atol=0, rtol=0)


@pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no oneDNN")
@pytest.mark.parametrize("relu", [False, True])
def test_onednn_linear_equals_linear(relu: bool) -> None:
    torch.manual_seed(0)
    ref = nn.Linear(24, 40)
    fast = nn.Linear(24, 40)
    fast.load_state_dict(ref.state_dict())
    fast.__class__ = OneDNNLinear
    fast.relu = relu
    x = torch.randn(3, 50, 24)
    want = F.relu(ref(x)) if relu else ref(x)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), want, atol=1e-5, rtol=0)


def test_cpu_supports_bf16_is_a_bool() -> None:
    assert isinstance(cpu_supports_bf16(), bool)
