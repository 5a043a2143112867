"""Backbone + head with the input normalisation inside, so callers feed pixels in [0, 1]."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class OpenSetClassifier(nn.Module):
    """images (B x C x H x W, [0, 1]) -> head outputs + `embedding` (B x D)."""

    def __init__(self, backbone: nn.Module, head: nn.Module,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.backbone((images - self.mean) / self.std)  # B x D
        outputs = self.head(embedding)
        outputs["embedding"] = embedding
        return outputs
