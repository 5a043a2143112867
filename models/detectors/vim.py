"""Virtual-logit matching, ViM (Wang, Li, Feng & Zhang, CVPR 2022).

Centre the embedding at the training mean u (the paper uses -W^+ b of a linear head; reciprocal
heads have none, so the mean is used for every head), take the principal subspace spanned by
the top `dim` eigenvectors of the training covariance, and score the residual off it against
the logits:
    r(z)  = || (z - u) R ||,   R = the D x (D - dim) complement of the principal subspace
    alpha = mean_train max_k (l_k / T) / mean_train r(z)
    s(z)  = alpha * r(z) - logsumexp(l / T)
with T the training temperature (the logits the model's softmax sees).
dim = D / 2 by default (the paper's choice for embeddings of a few hundred dimensions is of
that order).
"""
from __future__ import annotations

import torch
from torch import nn


class VimScore(nn.Module):
    def __init__(self, embed_dim: int, dim: int | None = None, temperature: float = 1.0):
        super().__init__()
        self.dim = embed_dim // 2 if dim is None else dim
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("origin", torch.zeros(embed_dim))  # D
        self.register_buffer("residual_basis", torch.zeros(embed_dim, embed_dim - self.dim))
        self.register_buffer("alpha", torch.ones(()))

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        return ((z - self.origin) @ self.residual_basis).norm(dim=1)  # B

    def fit(self, train: dict[str, torch.Tensor], labels: torch.Tensor,
            val: dict[str, torch.Tensor], seed: int = 0) -> VimScore:
        z = train["embedding"].double()  # N x D
        origin = z.mean(0)
        _, vectors = torch.linalg.eigh((z - origin).t() @ (z - origin) / len(z))  # ascending
        self.origin = origin.float()
        self.residual_basis = vectors[:, :z.shape[1] - self.dim].float()  # the smallest ones
        max_logit = (train["logits"] / self.temperature).amax(1).mean()
        self.alpha = (max_logit / self.residual(train["embedding"]).mean().clamp(min=1e-12)).float()
        return self

    def forward(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.alpha * self.residual(outputs["embedding"]) \
            - torch.logsumexp(outputs["logits"] / self.temperature, dim=1)
