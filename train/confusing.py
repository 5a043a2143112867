"""Confusing samples for ARPL+CS, with the GAN replaced by between-class mixtures.

ARPL+CS (Chen et al., TPAMI 2021) trains on generated samples near the known classes'
boundaries and asks the reciprocal-point classifier to be maximally uncertain on them, which
pushes them into the bounded open space where unknowns should land. Here the samples are
mixtures lam * x_i + (1 - lam) * x_j of two training images of DIFFERENT classes with
lam ~ U(0.35, 0.65): neither class, and close to both. They get the label -1 in the batch.
"""
from __future__ import annotations

import math

import torch

CONFUSING_LABEL = -1


def between_class_mixtures(images: torch.Tensor, labels: torch.Tensor, count: int,
                           generator: torch.Generator, low: float = 0.35,
                           high: float = 0.65) -> torch.Tensor:
    """Up to `count` mixtures of image pairs whose labels differ; N' x C x H x W."""
    partner = torch.randperm(len(images), generator=generator).to(labels.device)
    usable = torch.nonzero(labels != labels[partner]).squeeze(1)[:count]
    lam = torch.rand(len(usable), 1, 1, 1, generator=generator) * (high - low) + low
    lam = lam.to(images)
    return lam * images[usable] + (1 - lam) * images[partner[usable]]


def uncertainty_loss(logits: torch.Tensor) -> torch.Tensor:
    """log K - H(softmax(logits)), mean over rows: 0 exactly when the prediction is uniform.

    An empty batch of confusing samples costs 0.
    """
    if len(logits) == 0:
        return logits.new_zeros(())
    log_p = torch.log_softmax(logits, dim=1)  # N' x K
    entropy = -(log_p.exp() * log_p).sum(1)
    return (math.log(logits.shape[1]) - entropy).mean()
