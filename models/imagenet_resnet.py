"""ImageNet ResNet-18/34 (He et al. 2016) with torchvision's parameter names, minus the `fc` head.

The structure and every parameter/buffer name match torchvision.models.resnet18/34, so a
torchvision state dict loads as is (models/pretrained.py drops its `fc.*`). torchvision itself is
not a dependency. The embedding is the globally average-pooled output of the last ReLU block,
B x 512 at width 1 (non-negative), like the other backbones in models/backbones.py.
"""
from __future__ import annotations

import torch
from torch import nn

STAGE_CHANNELS = (64, 128, 256, 512)
DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs plus the shortcut; `downsample` (1x1 conv + BN) when shapes change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ImageNetResNet(nn.Module):
    """ResNet with the ImageNet stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool, four stages.

    `width` multiplies the stage channels 64/128/256/512 (rounded, at least 8); torchvision's
    pretrained weights fit width 1 only.
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0, depth: int = 18):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"unknown ResNet depth {depth}; choose from {sorted(DEPTHS)}")
        self.depth = depth
        widths = [max(8, int(round(c * width))) for c in STAGE_CHANNELS]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        previous = widths[0]
        for stage, (channels, blocks) in enumerate(zip(widths, DEPTHS[depth]), start=1):
            stride = 1 if stage == 1 else 2
            layer = [BasicBlock(previous, channels, stride)]
            layer += [BasicBlock(channels, channels) for _ in range(blocks - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
            previous = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embed_dim = previous
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's init; its optional zero-init of each block's last BN is left out
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # B x C x H/4 x W/4
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # B x D x H/32 x W/32
        return torch.flatten(self.avgpool(x), 1)  # B x D, D = embed_dim


def imagenet_resnet18(in_channels: int = 3, width: float = 1.0) -> ImageNetResNet:
    """ResNet-18: stages of 2, 2, 2, 2 blocks; 11,176,512 parameters at width 1 (without fc)."""
    return ImageNetResNet(in_channels, width, depth=18)


def imagenet_resnet34(in_channels: int = 3, width: float = 1.0) -> ImageNetResNet:
    """ResNet-34: stages of 3, 4, 6, 3 blocks; 21,284,672 parameters at width 1 (without fc)."""
    return ImageNetResNet(in_channels, width, depth=34)
