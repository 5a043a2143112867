"""Feature extractors: images (normalised) -> embedding z, B x D.

The embedding is the globally average-pooled output of the last ReLU block (non-negative),
as in the official ARPL networks; heads sit directly on it. The imagenet_resnet* entries take
torchvision's parameter names, so torchvision weights load into them (models/pretrained.py).
"""
from __future__ import annotations

import torch
from torch import nn

from models.imagenet_resnet import imagenet_resnet18, imagenet_resnet34


def _conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four-conv network for small grey images (28x28 MNIST, 8x8 digits), any input size.

    Pooling early keeps it fast on a CPU (~2k training images/s on 2 cores at 28x28).
    `width` multiplies every channel count (width 0.5 has about a quarter of the multiply-adds).
    """

    def __init__(self, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        c1, c2, c3 = (max(4, int(round(c * width))) for c in (32, 64, 128))
        self.features = nn.Sequential(
            _conv_bn(in_channels, c1), nn.MaxPool2d(2, ceil_mode=True),
            _conv_bn(c1, c2), nn.MaxPool2d(2, ceil_mode=True),
            _conv_bn(c2, c3), _conv_bn(c3, c3),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.embed_dim = c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # B x D, D = embed_dim


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016) with a 1x1 projection shortcut when shapes change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(in_channels, out_channels, stride),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 RGB images: 3x3 stem, no max-pool, four stages of two blocks."""

    def __init__(self, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        widths = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
        layers: list[nn.Module] = [_conv_bn(in_channels, widths[0])]
        previous = widths[0]
        for stage, channels in enumerate(widths):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(previous, channels, stride))
                previous = channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.embed_dim = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # B x D, D = embed_dim


BACKBONES = {"small_cnn": SmallCNN, "resnet18": CifarResNet18,
             "imagenet_resnet18": imagenet_resnet18, "imagenet_resnet34": imagenet_resnet34}
