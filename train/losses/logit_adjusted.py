"""Logit-adjusted cross-entropy (Menon et al., ICLR 2021), for long-tailed training data.

    L = CE(l + tau * log(pi), y),   pi_k = n_k / sum_j n_j  (training class priors)

Rare classes get their logits lowered during training, so the model must push them higher:
the Bayes-optimal rule for the balanced error. Prediction uses l unchanged. It replaces the
CE term of any method (`classification=`), like the class-balanced losses.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class LogitAdjustedLoss(nn.Module):
    def __init__(self, class_counts: Sequence[int], tau: float = 1.0):
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float32)
        if (counts <= 0).any():
            raise ValueError(f"every class needs training images, got counts {list(class_counts)}")
        self.register_buffer("adjustment", tau * torch.log(counts / counts.sum()))  # K

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.adjustment, target)  # logits B x K
