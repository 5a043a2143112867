"""Deferred re-sampling, DRS (Cao et al., NeurIPS 2019; the switch M2m makes before it
generates): train on the natural long-tailed distribution first, then, from `start_epoch`,
draw every batch class-balanced (class uniform, then an image of that class, augmented).

A batch hook of fit(): (epoch, x, y) -> (x, y).
"""
from __future__ import annotations

import torch

from train.augment import augment


def class_members(labels: torch.Tensor) -> list[torch.Tensor]:
    """Indices of each class's training images, K lists."""
    return [(labels == k).nonzero().view(-1) for k in range(int(labels.max()) + 1)]


def draw_images(images: torch.Tensor, members: list[torch.Tensor], classes: torch.Tensor,
                augmentation: str, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """One random augmented training image of each given class, on like's device and dtype."""
    picks = [members[k][torch.randint(len(members[k]), (1,), generator=generator)]
             for k in classes.tolist()]
    batch = images[torch.cat(picks)].to(like.device).float().div_(255)
    return augment(batch, augmentation, generator).to(like.dtype)


class DeferredResampling:
    """From `start_epoch` on, every batch is re-drawn class-balanced from the training set."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, start_epoch: int,
                 augmentation: str, seed: int):
        self.images = images  # uint8 N x C x H x W
        self.members = class_members(labels)
        self.start_epoch = start_epoch
        self.augmentation = augmentation
        self.generator = torch.Generator().manual_seed(seed + 104729)

    def __call__(self, epoch: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if epoch < self.start_epoch:
            return x, y
        targets = torch.randint(len(self.members), (len(y),), generator=self.generator)  # B
        batch = draw_images(self.images, self.members, targets, self.augmentation, self.generator, x)
        return batch.contiguous(memory_format=torch.channels_last), targets.to(y.device)
