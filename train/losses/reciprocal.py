"""The shape every reciprocal-point loss shares (Chen et al., ECCV 2020 / TPAMI 2021).

L = CE(l / T, y) + lambda * open_space(d_e(z, P_{y_i}), R)
with l the reciprocal-point head's logits (its variant, models/reciprocal_points.py), d_e(z, P_y)
the distance of each embedding to its own class's reciprocal points, and R the head's learnable
radius. A variant (rpl.py, arpl.py) sets its open-space term and default temperature.
"""
from __future__ import annotations

import torch
from torch import nn


class ReciprocalLoss(nn.Module):
    head = "reciprocal"  # the head variant is the method's name (LOSSES key)
    default_temperature = 1.0

    def __init__(self, temperature: float = 1.0, open_space_weight: float = 0.1,
                 classification: nn.Module | None = None):
        super().__init__()
        self.temperature = temperature
        # the CE term; a class-balanced or logit-adjusted loss can take its place
        self.classification = nn.CrossEntropyLoss() if classification is None else classification
        self.open_space_weight = open_space_weight

    @classmethod
    def from_config(cls, cfg, classification: nn.Module | None = None) -> ReciprocalLoss:
        """From a resolved train.config.TrainConfig (every task loss has this constructor)."""
        return cls(cfg.temperature, cfg.reciprocal.open_space_weight, classification)

    def open_space(self, own_distance: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """The open-space term of a B vector of own-class distances d_e(z_i, P_{y_i})."""
        raise NotImplementedError

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        logits = outputs["logits"] / self.temperature  # B x K
        own_distance = outputs["distances"].gather(1, target[:, None]).squeeze(1)  # B
        open_space = self.open_space(own_distance, outputs["radius"])
        return self.classification(logits, target) + self.open_space_weight * open_space
