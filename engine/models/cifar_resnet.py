"""CIFAR ResNet of 6n+2 form (ResNet-20/32/56/110), one local layer per residual block (docs/method.md 1.1)."""

from __future__ import annotations

import math

import torch
from auglocal.engine.models.base import LayeredModel, LayerInfo
from torch import nn

CIFAR_DEPTHS = {20: 3, 32: 5, 56: 9, 110: 18}


def he_fan_out_init(module: nn.Module) -> None:
    """Conv ~ N(0, sqrt(2/n)), n = kh*kw*out_channels; BN weight 1, bias 0; Linear keeps torch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU; projection shortcut when stride != 1 or in != out."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Stem(nn.Sequential):
    """conv3x3 3->16 stride 1 + BN + ReLU: local layer 0."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class PoolLinearHead(nn.Sequential):
    """Global average pool -> flatten -> [BatchNorm1d] -> Linear: the CIFAR ResNet classifier g."""

    def __init__(self, in_features: int, num_classes: int, batchnorm: bool = False):
        parts: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if batchnorm:
            parts.append(nn.BatchNorm1d(in_features))
        parts.append(nn.Linear(in_features, num_classes))
        super().__init__(*parts)


class CifarResNet(LayeredModel):
    """ResNet-(6n+2) for 32x32 (or 96x96) inputs: L = 1 + 3n local layers, widths 16/32/64."""

    family = "cifar_resnet"
    convention = "cifar"
    aux_downsample = "stride"

    def __init__(self, depth: int = 32, num_classes: int = 10, input_size: int = 32):
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        layers: list[nn.Module] = [Stem()]
        info = [LayerInfo(0, 16, 16, input_size, "R")]
        in_ch, size = 16, input_size
        for stage, width in enumerate((16, 32, 64)):
            for b in range(n):
                stride = 2 if (stage > 0 and b == 0) else 1
                size = (size + stride - 1) // stride
                layers.append(BasicBlock(in_ch, width, stride))
                info.append(LayerInfo(len(info), width, width, size, "R"))
                in_ch = width
        super().__init__(layers, PoolLinearHead(64, num_classes), info, num_classes, input_size,
                         f"resnet{depth}")
        he_fan_out_init(self)

    def aux_block(self, j: int, in_channels: int, stride: int) -> nn.Module:
        return BasicBlock(in_channels, self.info[j].width, stride)

    def aux_head(self, in_channels: int, k: int) -> nn.Module:
        return PoolLinearHead(in_channels, self.num_classes, batchnorm=(k == 1))

    def init_aux(self, module: nn.Module) -> None:
        he_fan_out_init(module)
