"""Batched random affine augmentation on tensors (no torchvision on this stack)."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

AUGMENTATIONS = ("none", "affine", "affine-flip")


def random_affine(images: torch.Tensor, generator: torch.Generator, shift: float = 0.1,
                  degrees: float = 10.0, scale: float = 0.1, flip: bool = False) -> torch.Tensor:
    """Per-image random translation (fraction of size), rotation, zoom and optional h-flip."""
    batch = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator) * (high - low) + low

    angle = uniform(-degrees, degrees) * math.pi / 180
    zoom = uniform(1 - scale, 1 + scale)
    mirror = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0) if flip \
        else torch.ones(batch)
    theta = torch.zeros(batch, 2, 3)  # B x 2 x 3, maps output grid -> input grid
    theta[:, 0, 0] = torch.cos(angle) / zoom * mirror
    theta[:, 0, 1] = -torch.sin(angle) / zoom
    theta[:, 1, 0] = torch.sin(angle) / zoom * mirror
    theta[:, 1, 1] = torch.cos(angle) / zoom
    theta[:, :, 2] = torch.stack([uniform(-shift, shift), uniform(-shift, shift)], 1) * 2
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)


def augment(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    if kind == "none":
        return images
    return random_affine(images, generator, flip=kind == "affine-flip")
