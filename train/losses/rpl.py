"""Reciprocal Point Learning loss (Chen et al., ECCV 2020).

L = CE(l / T, y) + lambda * mean_i (d_e(z_i, P_{y_i}) - R)^2
with l_k = d_e(z, P_k) from the reciprocal-point head (variant "rpl") and R its learnable
radius: the open-space term keeps every known embedding at distance ~R from its class's
reciprocal point, which bounds the space left to unknowns.
"""
from __future__ import annotations

import torch

from train.losses.reciprocal import ReciprocalLoss


class ReciprocalPointLoss(ReciprocalLoss):
    # d_e / D alone is an order of magnitude flatter than ARPL's d_e - d_d on the same
    # normalised features, so RPL needs a lower temperature to train at the same pace.
    default_temperature = 0.1

    def open_space(self, own_distance: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        return (own_distance - radius).pow(2).mean()
