"""Reciprocal Point Learning loss (Chen et al., ECCV 2020).

L = CE(l / T, y) + lambda * mean_i (d_e(z_i, P_{y_i}) - R)^2
with l_k = d_e(z, P_k) from the reciprocal-point head and R its learnable radius: the
open-space term keeps every known embedding at distance ~R from its class's reciprocal
point, which bounds the space left to unknowns.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ReciprocalPointLoss(nn.Module):
    head = "reciprocal"  # with variant "rpl"
    # d_e / D alone is an order of magnitude flatter than ARPL's d_e - d_d on the same
    # normalised features, so RPL needs a lower temperature to train at the same pace.
    default_temperature = 0.1

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
        open_space = (own_distance - outputs["radius"]).pow(2).mean()
        return self.classification(logits, target) + self.open_space_weight * open_space
