"""Reciprocal Point Learning loss (Chen et al., ECCV 2020).

L = CE(l / T, y) + lambda * mean_i (d_e(z_i, P_{y_i}) - R)^2 [+ beta * uncertainty on confusing samples]
with l_k = d_e(z, P_k) from the reciprocal-point head and R its learnable radius: the
open-space term keeps every known embedding at distance ~R from its class's reciprocal
point, which bounds the space left to unknowns.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from train.confusing import CONFUSING_LABEL, uncertainty_loss


class ReciprocalPointLoss(nn.Module):
    def __init__(self, temperature: float = 1.0, open_space_weight: float = 0.1,
                 confusing_weight: float = 0.1):
        super().__init__()
        self.temperature = temperature
        self.open_space_weight = open_space_weight
        self.confusing_weight = confusing_weight

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        known = target != CONFUSING_LABEL  # confusing samples (label -1) only feed the last term
        logits = outputs["logits"] / self.temperature  # B x K
        own_distance = outputs["distances"][known].gather(1, target[known, None]).squeeze(1)
        open_space = (own_distance - outputs["radius"]).pow(2).mean()
        return (F.cross_entropy(logits[known], target[known])
                + self.open_space_weight * open_space
                + self.confusing_weight * uncertainty_loss(logits[~known]))
