"""Adversarial Reciprocal Point Learning loss, without the GAN (Chen et al., TPAMI 2021).

L = CE(l / T, y) + lambda * mean_i max(0, d_e(z_i, P_{y_i}) - R + 1)
with l_k = d_e(z, P_k) - d_d(z, P_k) from the reciprocal-point head (variant "arpl") and R its
learnable radius (the official code's MarginRankingLoss(margin=1) on (R, d_e)).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from train.losses.reciprocal import ReciprocalLoss


class AdversarialReciprocalPointLoss(ReciprocalLoss):
    default_temperature = 1.0

    def open_space(self, own_distance: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        return F.relu(own_distance - radius + 1).mean()
