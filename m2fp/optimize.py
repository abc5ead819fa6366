"""Make an M2FP fast for inference: a separate copy with folded BatchNorm, channels-last
convolutions and GroupNorm, gather-based deformable attention, oneDNN linears in the
deformable encoder (CPU), a leaner decoder and optional autocast (bf16/fp16).

The original model stays untouched: it is the reference the tests compare against. In fp32
the optimized copy gives the same outputs within float rounding (tests: 1e-4 on the tiny
configuration and on ModelScope's tiny reference; `bench/forward.py` prints the R101 figure).
Measurements: docs/performance.md.

Threads are not set here: torch's intra-op pool is per process, so the service decides
(`torch.set_num_threads`, `OMP_NUM_THREADS`); see docs/performance.md.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from m2fp import device as device_rules
from m2fp.modeling.backbone import ConvNorm
from m2fp.modeling.deform_attn import MSDeformAttn
from m2fp.modeling.m2fp import M2FP
from m2fp.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from m2fp.modeling.transformer_decoder import MaskedAttentionDecoder

_AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


def optimize_for_inference(
    model: M2FP,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool | None = None,
) -> M2FP:
    """Return an inference-only copy of `model` on `device`; `model` itself is not changed.

    The copy is an `M2FP` with the same call signature and `M2FPOutput`; its outputs are
    always float32. Its state dict is not the checkpoint's (BatchNorm is folded into the
    convolutions): save the original, never the copy.

    Args:
        model: an M2FP (any configuration), e.g. from `m2fp.build.load_model`.
        device: where the copy lives; inputs on another device are moved there (through
            pinned memory when going to CUDA).
        dtype: torch.float32 computes in fp32 (the CPU default, same results). float16 or
            bfloat16 run the network under autocast in that type: on CUDA the usual choice
            (float16 on any GPU, bfloat16 on Ampere and later); on a CPU only bfloat16, and
            only worth it with native bf16 instructions (see `cpu_supports_bf16`). Results
            then differ from fp32 by more than rounding: docs/performance.md has the deviation.
        channels_last: run convolutions on NHWC tensors. None = yes (oneDNN on CPU and cuDNN
            on tensor-core GPUs both prefer it).

    Raises:
        TypeError: `model` is not an M2FP.
        ValueError: `dtype` is not float32/float16/bfloat16, or float16 on a CPU
            (`m2fp.device.DeviceError`).
    """
    if not isinstance(model, M2FP):
        raise TypeError(f"expected an M2FP model, got {type(model).__name__}")
    device = torch.device(device)
    device_rules.check_pair(device.type, device_rules.precision_of(dtype))
    fast = copy.deepcopy(model).to(device=device, dtype=torch.float32).eval()
    fast.requires_grad_(False)
    fold_batchnorm_(fast)
    use_channels_last = True if channels_last is None else channels_last
    if use_channels_last:
        fast.to(memory_format=torch.channels_last)  # 4-d weights only
        _swap_group_norms(fast)
    fast.channels_last = use_channels_last
    if device.type == "cpu" and dtype == torch.float32 and onednn_linear_available():
        _use_onednn_linears(fast.sem_seg_head.pixel_decoder.transformer)
    fast.autocast_dtype = None if dtype == torch.float32 else dtype
    for module in fast.modules():
        if isinstance(module, MSDeformAttn):
            module.sampler = "gather"
        elif isinstance(module, MSDeformAttnPixelDecoder):
            module.channels_last = use_channels_last
        elif isinstance(module, MaskedAttentionDecoder):
            module.fast = True
    return fast


class OneDNNLinear(nn.Linear):
    """nn.Linear computed by oneDNN (`torch.ops.mkldnn._linear_pointwise`), optionally with
    the ReLU that follows it fused in. On the deformable encoder's (11340, 256..1024) inputs it
    is faster than the default MKL addmm (docs/performance.md); same weights, results equal to
    float rounding. CPU and float32 only (autocast does not know the op).

    With `relu=True` the output is already rectified; the encoder's own ReLU after it then
    changes nothing (ReLU is idempotent) and costs one cheap in-place pass."""

    relu: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attr = "relu" if self.relu else "none"
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, attr, [], "")


def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's fused linear op (x86 CPU builds do)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 (raises when the op is missing)
    except (AttributeError, RuntimeError):
        return False
    return True


def _use_onednn_linears(module: nn.Module) -> None:
    """Make every plain nn.Linear under `module` a OneDNNLinear (the same parameters), with
    ReLU fused into the encoder FFNs' first linear."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                child.__class__ = OneDNNLinear
                child.relu = name == "linear1"


class GroupNormChannelsLast(nn.GroupNorm):
    """GroupNorm that keeps a channels-last input channels-last, with accurate statistics.

    torch's own channels-last GroupNorm kernel is fast but inaccurate (docs/performance.md);
    the NCHW kernel is accurate but needs two full layout copies per map at stride 4. Here each
    group's mean and variance come from `torch.var_mean` (as accurate as the NCHW kernel) and
    the normalisation is one fused pass in the NHWC layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        if x.dtype in _AUTOCAST_DTYPES:
            x = x.float()  # as autocast runs group_norm: in float32
        n, c, h, w = x.shape
        g = self.num_groups
        # (N, H*W, groups, C/groups): a view of the NHWC memory
        grouped = x.permute(0, 2, 3, 1).reshape(n, h * w, g, c // g)
        var, mean = torch.var_mean(grouped, dim=(1, 3), keepdim=True, correction=0)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.view(1, 1, g, c // g)
            shift = self.bias.view(1, 1, g, c // g) - mean * scale
        else:
            shift = -mean * scale
        out = torch.addcmul(shift, grouped, scale)
        return out.view(n, h, w, c).permute(0, 3, 1, 2)  # (N, C, H, W), channels-last


def _swap_group_norms(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.GroupNorm:
                swapped = GroupNormChannelsLast(
                    child.num_groups, child.num_channels, eps=child.eps, affine=child.affine
                )
                if child.affine:
                    swapped.to(device=child.weight.device, dtype=child.weight.dtype)
                swapped.load_state_dict(child.state_dict())
                setattr(parent, name, swapped)


def fold_batchnorm_(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that follows a `ConvNorm` into the convolution's weight
    and bias, in place; returns how many were folded.

    conv(x)·s + t with s = γ / sqrt(var + eps), t = β − mean·s is conv'(x) with weight W·s
    and bias b·s + t. GroupNorm is left alone (it depends on the input).
    """
    folded = 0
    for module in model.modules():
        if not (isinstance(module, ConvNorm) and isinstance(module.norm, nn.BatchNorm2d)):
            continue
        bn = module.norm
        if bn.training or bn.running_mean is None or bn.running_var is None:
            raise ValueError("BatchNorm folding needs eval-mode BatchNorm with running stats")
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var.double() + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.double()
            shift = -bn.running_mean.double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.double()
            if module.bias is not None:
                shift = shift + module.bias.double() * scale
            weight = module.weight.double() * scale.view(-1, 1, 1, 1)
            module.weight = nn.Parameter(weight.to(module.weight.dtype), requires_grad=False)
            module.bias = nn.Parameter(shift.to(module.weight.dtype), requires_grad=False)
        module.norm = None
        folded += 1
    return folded


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bfloat16 dot products (AVX512-BF16 or AMX-BF16), where
    `optimize_for_inference(..., dtype=torch.bfloat16)` can pay off on a CPU."""
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.startswith("AVX512"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
