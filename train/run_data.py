"""The data stage of a run: the dataset, its open-set split (long-tailed on request), labels."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from cli_errors import UserError
from data.datasets import ImageSet, load_dataset
from data.image_files import DecodeOptions, FileImages, parse_image_size
from data.splits import (OpenSetSplit, draw_known_classes, long_tail_subset, open_set_split,
                         parse_known)
from train.config import LongTailConfig, TrainConfig


@dataclass(frozen=True)
class RunData:
    """A dataset with one run's split; `labels` are 0..K-1 for known classes, -1 for unknown."""
    dataset: ImageSet
    split: OpenSetSplit
    labels: np.ndarray  # N

    @property
    def input_shape(self) -> tuple[int, int, int]:  # C, H, W
        return tuple(self.dataset.images.shape[1:])

    @property
    def known_names(self) -> list[str]:
        return [self.dataset.class_names[c] for c in self.split.known_classes]

    @property
    def unknown_names(self) -> list[str]:
        return [name for i, name in enumerate(self.dataset.class_names)
                if i not in self.split.known_classes]

    @property
    def class_counts(self) -> list[int]:
        """Training images per known class."""
        return np.bincount(self.labels[self.split.train],
                           minlength=len(self.split.known_classes)).tolist()

    def images(self, part: str) -> np.ndarray | FileImages:
        """uint8 N x C x H x W of one split part: train, val, test_known or test_unknown
        (file images that exceed the cache stay files: a lazy subset)."""
        images, index = self.dataset.images, getattr(self.split, part)
        return images.take(index) if isinstance(images, FileImages) else images[index]

    def part_labels(self, part: str) -> np.ndarray:
        return self.labels[getattr(self.split, part)]

    def tensors(self, part: str) -> tuple[torch.Tensor | FileImages, torch.Tensor]:
        """(images, labels) for the training loop: file images stay files (train/batches.py)."""
        images = self.images(part)
        if not isinstance(images, FileImages):
            images = torch.from_numpy(images)
        return images, torch.from_numpy(self.part_labels(part))

    def in_memory(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) as tensors, file images decoded into memory (M2m and DRS draw
        from the whole training part at random)."""
        return torch.from_numpy(np.asarray(self.images(part)[:])), torch.from_numpy(self.part_labels(part))


def load_run_data(cfg: TrainConfig, progress: bool = True) -> RunData:
    """--dataset split by --known / --num-known and --split-seed; --imbalance thins the training
    part only (validation and test stay as drawn)."""
    data = load_dataset(cfg.dataset, decode_options(cfg, progress))
    known = (parse_known(cfg.known, data.class_names) if cfg.known
             else draw_known_classes(data.num_classes, cfg.num_known, cfg.split_seed))
    split = open_set_split(data.labels, known, cfg.split_seed, cfg.val_fraction, cfg.test_fraction)
    split = long_tail_train(cfg.long_tail, split, data.labels, list(data.class_names),
                            cfg.split_seed)
    return RunData(data, split, split.relabel(data.labels))


def decode_options(cfg: TrainConfig, progress: bool = True) -> DecodeOptions:
    """The --image-size, --resize, --workers, --cache-mb and --strict settings for data/."""
    images = cfg.images
    return DecodeOptions(parse_image_size(images.image_size), images.resize, images.workers,
                         int(images.cache_mb * 2**20), images.strict, progress)


def long_tail_train(cfg: LongTailConfig, split: OpenSetSplit, labels: np.ndarray,
                    class_names: list[str], seed: int) -> OpenSetSplit:
    """The split with its training part made long-tailed (--imbalance), val/test untouched."""
    if cfg.imbalance == 1:
        return split
    order = split.known_classes
    if cfg.imbalance_order:
        items = [item.strip() for item in cfg.imbalance_order.split(",")]
        missing = [item for item in items if item not in class_names]
        if missing:
            raise UserError(f"--imbalance-order names {missing}, which are not classes of the dataset")
        order = tuple(class_names.index(item) for item in items)
    if sorted(order) != sorted(split.known_classes):
        raise UserError(f"--imbalance-order must list exactly the known classes "
                        f"{[class_names[c] for c in split.known_classes]}, got {cfg.imbalance_order!r}")
    train = long_tail_subset(split.train, labels, cfg.imbalance, order, seed)
    return dataclasses.replace(split, train=train)
