"""Plain cross-entropy on the head's logits: the closed-set baseline (MSP / MLS scores)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CrossEntropyLoss(nn.Module):
    """CE(logits, y), mean over the batch."""

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs["logits"], target)
