"""Relational knowledge distillation, RKD (Park et al., CVPR 2019), plus the student's task loss.

On L2-normalised embeddings of a batch, student s and frozen teacher t:
    psi_D(a, b)    = ||a - b|| / mu, mu = mean off-diagonal pairwise distance (per network)
    psi_A(a, b, c) = <e_ab, e_cb>, e_ab = (a - b) / ||a - b||  (cosine of the angle at b)
    L = task + w_D * Huber(psi_D(s), psi_D(t)) + w_A * Huber(psi_A(s), psi_A(t))
Defaults w_D = 25, w_A = 50 are the official classification settings. The loop puts the
teacher's embedding of the same augmented batch in outputs["teacher_embedding"].
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _pairwise_distances(embedding: torch.Tensor) -> torch.Tensor:
    """B x D -> B x B Euclidean distances (exact zeros on the diagonal)."""
    squared = embedding.pow(2).sum(1)
    gram = embedding @ embedding.t()
    distances = (squared[:, None] + squared[None, :] - 2 * gram).clamp(min=1e-12).sqrt()
    return distances * (1 - torch.eye(len(embedding), device=embedding.device))


def distance_potential(embedding: torch.Tensor) -> torch.Tensor:
    """psi_D: B x B pairwise distances divided by their off-diagonal mean."""
    distances = _pairwise_distances(embedding)
    off_diagonal = distances[distances > 0]
    return distances / off_diagonal.mean().clamp(min=1e-12)


def angle_potential(embedding: torch.Tensor) -> torch.Tensor:
    """psi_A: B x B x B, [b, a, c] = cosine of the angle at b between a and c."""
    edges = F.normalize(embedding[None, :, :] - embedding[:, None, :], p=2, dim=2)  # B x B x D
    return edges @ edges.transpose(1, 2)  # B x B x B


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        target = distance_potential(teacher)
    return F.smooth_l1_loss(distance_potential(student), target)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        target = angle_potential(teacher)
    return F.smooth_l1_loss(angle_potential(student), target)


class RelationalDistillationLoss(nn.Module):

    def __init__(self, task: nn.Module, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        self.task = task
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        student = F.normalize(outputs["embedding"], dim=1)  # B x D_s
        teacher = F.normalize(outputs["teacher_embedding"], dim=1)  # B x D_t
        return (self.task(outputs, target)
                + self.distance_weight * rkd_distance_loss(student, teacher)
                + self.angle_weight * rkd_angle_loss(student, teacher))
