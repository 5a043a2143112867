"""Adversarial Reciprocal Point Learning loss, without the GAN (Chen et al., TPAMI 2021).

L = CE(l / T, y) + lambda * mean_i max(0, d_e(z_i, P_{y_i}) - R + 1)
with l_k = d_e(z, P_k) - d_d(z, P_k) from the reciprocal-point head (variant "arpl") and R its
learnable radius (the official code's MarginRankingLoss(margin=1) on (R, d_e)).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class AdversarialReciprocalPointLoss(nn.Module):
    head = "reciprocal"  # with variant "arpl"
    default_temperature = 1.0

    def __init__(self, temperature: float = 1.0, open_space_weight: float = 0.1,
                 classification: nn.Module | None = None):
        super().__init__()
        self.temperature = temperature
        # the CE term; a class-balanced loss (class_balanced.py) can take its place
        self.classification = nn.CrossEntropyLoss() if classification is None else classification
        self.open_space_weight = open_space_weight

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        logits = outputs["logits"] / self.temperature  # B x K
        own_distance = outputs["distances"].gather(1, target[:, None]).squeeze(1)  # B
        open_space = F.relu(own_distance - outputs["radius"] + 1).mean()
        return self.classification(logits, target) + self.open_space_weight * open_space
