"""DeepLab ResNet backbone (3-conv stem, stride on the 3x3 conv) returning res2..res5."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_DEPTH_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class ConvNorm(nn.Conv2d):
    """Conv2d with a `norm` child (detectron2 key layout `conv.weight`, `conv.norm.*`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: nn.Module | None = None,
        relu: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.norm = norm
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x, inplace=True) if self.relu else x


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5)


class DeepLabStem(nn.Module):
    """conv3x3 s2 (3→c/2) → conv3x3 (c/2→c/2) → conv3x3 (c/2→c), each BN+ReLU, then maxpool s2."""

    def __init__(self, *, in_channels: int = 3, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = ConvNorm(
            in_channels, mid, kernel_size=3, stride=2, padding=1, norm=_bn(mid), relu=True
        )
        self.conv2 = ConvNorm(mid, mid, kernel_size=3, padding=1, norm=_bn(mid), relu=True)
        self.conv3 = ConvNorm(
            mid, out_channels, kernel_size=3, padding=1, norm=_bn(out_channels), relu=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) → (B,C,H/4,W/4)."""
        x = self.conv3(self.conv2(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1x1 → 3x3 (stride, dilation) → 1x1 with BN; 1x1+BN shortcut when channels change."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        stride: int,
        num_groups: int,
        dilation: int,
        stride_in_1x1: bool,
    ) -> None:
        super().__init__()
        if in_channels != out_channels:
            self.shortcut = ConvNorm(
                in_channels, out_channels, kernel_size=1, stride=stride, norm=_bn(out_channels)
            )
        else:
            self.shortcut = None
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        b = bottleneck_channels
        self.conv1 = ConvNorm(in_channels, b, kernel_size=1, stride=s1, norm=_bn(b), relu=True)
        self.conv2 = ConvNorm(
            b,
            b,
            kernel_size=3,
            stride=s3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            norm=_bn(b),
            relu=True,
        )
        self.conv3 = ConvNorm(b, out_channels, kernel_size=1, norm=_bn(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu(out, inplace=True)


class DeepLabResNet(nn.Module):
    """ResNet with a DeepLab stem. `forward` returns {"res2": s4, "res3": s8, "res4": s16,
    "res5": s32} feature maps (only those in `out_features`)."""

    def __init__(
        self,
        *,
        depth: int,
        num_groups: int,
        width_per_group: int,
        stem_out_channels: int,
        res2_out_channels: int,
        stride_in_1x1: bool,
        res4_dilation: int,
        res5_dilation: int,
        res5_multi_grid: tuple[int, ...],
        out_features: tuple[str, ...],
    ) -> None:
        super().__init__()
        if depth not in _DEPTH_BLOCKS:
            raise ValueError(f"unsupported ResNet depth {depth}")
        self.stem = DeepLabStem(out_channels=stem_out_channels)
        self.out_features = tuple(out_features)
        self.out_channels: dict[str, int] = {}
        in_ch, out_ch = stem_out_channels, res2_out_channels
        bottleneck = num_groups * width_per_group
        self.stage_names: list[str] = []
        for idx, n_blocks in enumerate(_DEPTH_BLOCKS[depth]):
            name = f"res{idx + 2}"
            dilation = {4: res4_dilation, 5: res5_dilation}.get(idx + 2, 1)
            first_stride = 1 if idx == 0 or dilation > 1 else 2
            blocks = []
            for i in range(n_blocks):
                d = dilation * res5_multi_grid[i] if idx == 3 else dilation
                blocks.append(
                    BottleneckBlock(
                        in_channels=in_ch,
                        out_channels=out_ch,
                        bottleneck_channels=bottleneck,
                        stride=first_stride if i == 0 else 1,
                        num_groups=num_groups,
                        dilation=d,
                        stride_in_1x1=stride_in_1x1,
                    )
                )
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self.out_channels[name] = out_ch
            out_ch *= 2
            bottleneck *= 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B,3,H,W), H and W multiples of 32 → dict of (B,C_l,H/s_l,W/s_l)."""
        out = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                out[name] = x
        return out
