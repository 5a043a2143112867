"""Fusion of the head's max-logit score and k-NN evidence on the embedding.

For reciprocal-point heads the max-logit is the reciprocal-distance score -max_k l_k; the k-NN
score is models/detectors/knn.py's. Each is standardised by its mean and standard deviation on
the KNOWN validation images (no unknown image is used), and the two are added:
    s(z) = (s_logit - m_logit) / sd_logit + (s_knn - m_knn) / sd_knn
"""
from __future__ import annotations

import torch
from torch import nn

from models.detectors.knn import KnnScore
from models.detectors.logit_scores import MaxLogitScore


class LogitKnnFusion(nn.Module):
    def __init__(self, embed_dim: int, bank_size: int, k: int = 1):
        super().__init__()
        self.knn = KnnScore(embed_dim, bank_size, k)
        self.logit = MaxLogitScore()
        self.register_buffer("centre", torch.zeros(2))  # logit, knn
        self.register_buffer("scale", torch.ones(2))

    def parts(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([self.logit(outputs), self.knn(outputs)], dim=1)  # B x 2

    def fit(self, train: dict[str, torch.Tensor], labels: torch.Tensor,
            val: dict[str, torch.Tensor], seed: int = 0) -> LogitKnnFusion:
        self.knn.fit(train, labels, val, seed)
        parts = self.parts(val)  # known validation images only
        self.centre = parts.mean(0)
        self.scale = parts.std(0).clamp(min=1e-6)
        return self

    def forward(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((self.parts(outputs) - self.centre) / self.scale).sum(1)  # B
