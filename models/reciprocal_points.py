"""Reciprocal-point head: RPL (Chen et al., ECCV 2020) and ARPL (Chen et al., TPAMI 2021).

Each class k owns M learnable reciprocal points P_k (the "otherness" of class k). With an
embedding z in R^D:
    d_e(z, P_k) = ||z - P_k||^2 / D          (mean over dims)
    d_d(z, P_k) = z . P_k
    RPL logits  l_k = d_e(z, P_k)
    ARPL logits l_k = d_e(z, P_k) - d_d(z, P_k)
A sample is class k when it is FAR from P_k. Unknowns land close to all reciprocal points
(the bounded open space), so a low max_k l_k means "unknown".
"""
from __future__ import annotations

import torch
from torch import nn



def rpl_logits(euclidean: torch.Tensor, dot: torch.Tensor) -> torch.Tensor:
    return euclidean


def arpl_logits(euclidean: torch.Tensor, dot: torch.Tensor) -> torch.Tensor:
    return euclidean - dot


# variant -> logits from (d_e, d_d); a training method of the same name trains each (train/losses)
VARIANTS = {"rpl": rpl_logits, "arpl": arpl_logits}


def mls_unknown_score(logits: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """-max_k l_k: the official ARPL score (raw logit), negated so higher = more unknown."""
    return -logits.amax(dim=1)


def msp_unknown_score(logits: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """-max_k softmax(l)_k: the official RPL score, negated."""
    return -torch.softmax(logits, dim=1).amax(dim=1)


def distance_unknown_score(logits: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """-max_k d_e(z, P_k): the Euclidean distance to the farthest reciprocal point, negated."""
    return -distances.amax(dim=1)


SCORES = {"mls": mls_unknown_score, "msp": msp_unknown_score, "distance": distance_unknown_score}


class ReciprocalPointHead(nn.Module):
    """K*M reciprocal points and the open-space radius R; logits, distances, unknown score."""

    def __init__(self, embed_dim: int, num_classes: int, points_per_class: int = 1,
                 variant: str = "arpl", score: str = "mls", feature_scale: float = 0.0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; choose from {sorted(SCORES)}")
        # rows k*M .. k*M+M-1 belong to class k; 0.1 * N(0, 1) as in the official code
        self.points = nn.Parameter(0.1 * torch.randn(num_classes * points_per_class, embed_dim))
        self.radius = nn.Parameter(torch.zeros(1))
        self.num_classes = num_classes
        self.points_per_class = points_per_class
        self.variant = variant
        self.score = score
        self.feature_scale = feature_scale  # > 0: z -> feature_scale * z / ||z|| first

    def point_distances(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d_e, d_d), each B x K, averaged over each class's M points."""
        dim = z.shape[1]
        dot = z @ self.points.t()  # B x KM
        euclidean = (z.pow(2).sum(1, keepdim=True) - 2 * dot
                     + self.points.pow(2).sum(1)[None, :]) / dim  # B x KM
        shape = (z.shape[0], self.num_classes, self.points_per_class)
        return euclidean.reshape(shape).mean(2), dot.reshape(shape).mean(2)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.feature_scale > 0:
            z = self.feature_scale * torch.nn.functional.normalize(z, dim=1)
        euclidean, dot = self.point_distances(z)  # B x K each
        logits = VARIANTS[self.variant](euclidean, dot)  # B x K
        score = SCORES[self.score](logits, euclidean)  # B
        return {
            "logits": logits,
            "distances": euclidean,
            "unknown_score": score,
            "reciprocal_score": score,  # stays served when a post-hoc detector decides
            "radius": self.radius,  # read by the open-space loss term
        }

    def all_scores(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every unknown score this head can serve, for side-by-side evaluation."""
        return {name: fn(outputs["logits"], outputs["distances"]) for name, fn in SCORES.items()}
