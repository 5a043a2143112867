"""Mahalanobis unknown score (Lee, Lee, Lee & Shin, NeurIPS 2018), without input perturbation.

Class means mu_c and one shared covariance S of the training embeddings (the tied-covariance
Gaussian discriminant); with P = S^-1 (pseudo-inverse):
    s(z) = min_c (z - mu_c)^T P (z - mu_c)
computed on the explicit differences (B x K x D; K is small): the expanded form
z^T P z - 2 z^T P mu_c + mu_c^T P mu_c cancels badly in float32.
"""
from __future__ import annotations

import torch
from torch import nn


class MahalanobisScore(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.register_buffer("means", torch.zeros(num_classes, embed_dim))  # K x D
        self.register_buffer("precision", torch.eye(embed_dim))  # D x D

    def fit(self, train: dict[str, torch.Tensor], labels: torch.Tensor,
            val: dict[str, torch.Tensor], seed: int = 0) -> MahalanobisScore:
        z = train["embedding"].double()  # N x D
        means = torch.stack([z[labels == c].mean(0) for c in range(len(self.means))])  # K x D
        centred = z - means[labels]  # N x D
        covariance = centred.t() @ centred / len(z)  # D x D
        self.means = means.float()
        self.precision = torch.linalg.pinv(covariance, hermitian=True).float()
        return self

    def forward(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        diff = outputs["embedding"][:, None, :] - self.means[None]  # B x K x D
        return ((diff @ self.precision) * diff).sum(2).amin(dim=1)  # B
