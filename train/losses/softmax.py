"""Plain cross-entropy on the head's logits: the closed-set baseline (MSP / MLS scores)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CrossEntropyLoss(nn.Module):
    """CE(logits / T, y), mean over the batch."""

    head = "linear"  # the head this method trains
    default_temperature = 1.0

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs["logits"] / self.temperature, target)
