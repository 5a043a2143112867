"""Plain cross-entropy on the head's logits: the closed-set baseline (MSP / MLS scores)."""
from __future__ import annotations

import torch
from torch import nn


class CrossEntropyLoss(nn.Module):
    """CE(logits / T, y), mean over the batch."""

    head = "linear"  # the head this method trains
    default_temperature = 1.0

    def __init__(self, temperature: float = 1.0, classification: nn.Module | None = None):
        super().__init__()
        self.temperature = temperature
        # the CE term; a class-balanced loss (class_balanced.py) can take its place
        self.classification = nn.CrossEntropyLoss() if classification is None else classification

    @classmethod
    def from_config(cls, cfg, classification: nn.Module | None = None) -> CrossEntropyLoss:
        """From a resolved train.config.TrainConfig (every task loss has this constructor)."""
        return cls(cfg.temperature, classification)

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return self.classification(outputs["logits"] / self.temperature, target)
