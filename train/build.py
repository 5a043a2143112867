"""The build stage of a run: the network (from its ModelSpec) and the method's loss."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cli_errors import UserError
from data.image_files import FileImages
from models import ModelSpec, OpenSetClassifier, build_classifier
from models.pretrained import PretrainedError, load_pretrained
from train.config import LongTailConfig, TrainConfig
from train.losses import LOSSES, RelationalDistillationLoss, SelfLabelAugmentationLoss
from train.losses.class_balanced import SIGMOID_LOSSES, build_class_balanced, init_sigmoid_bias
from train.losses.logit_adjusted import LogitAdjustedLoss
from train.run_data import RunData


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's
STATISTICS_SAMPLE = 2048  # file images that exceed the cache: normalisation from a sample
EXACT_STATISTICS_BYTES = 64 * 2**20  # up to this, one float32 pass (the statistics runs had)


def channel_statistics(images) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the training images in [0, 1]. Small sets: numpy over one
    float32 copy, as always; larger ones in float64 chunks (no copy of the whole set), file
    images that exceed the cache over a seeded sample."""
    if isinstance(images, FileImages) and len(images) > STATISTICS_SAMPLE:
        images = images.take(np.sort(np.random.default_rng(0).permutation(len(images))[:STATISTICS_SAMPLE]))
    if not isinstance(images, FileImages) and images.nbytes <= EXACT_STATISTICS_BYTES:
        pixels = images.astype(np.float32) / 255  # N x C x H x W
        return (tuple(float(m) for m in pixels.mean(axis=(0, 2, 3))),
                tuple(float(s) for s in pixels.std(axis=(0, 2, 3))))
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for start in range(0, len(images), 256):
        chunk = np.asarray(images[start:start + 256], dtype=np.float64) / 255
        total += chunk.sum(axis=(0, 2, 3))
        squares += (chunk ** 2).sum(axis=(0, 2, 3))
    count = len(images) * images.shape[2] * images.shape[3]
    mean = total / count
    return tuple(mean.tolist()), tuple(np.sqrt(np.maximum(squares / count - mean ** 2, 0)).tolist())


def model_spec(cfg: TrainConfig, data: RunData) -> ModelSpec:
    """The network a resolved config trains; normalisation statistics from the training images."""
    mean, std = channel_statistics(data.images("train"))
    return ModelSpec(
        arch=cfg.arch, in_channels=data.input_shape[0], num_classes=len(data.known_names),
        head=cfg.head, width=cfg.width,
        variant=cfg.task if cfg.head == "reciprocal" else "arpl",
        points_per_class=cfg.reciprocal.points_per_class,
        feature_scale=cfg.reciprocal.feature_scale, score=cfg.score,
        sla_transform=cfg.sla.transform if cfg.method == "sla" else "none",
        mean=mean, std=tuple(s + 1e-6 for s in std),
    )


def build_model(cfg: TrainConfig, data: RunData,
                progress: bool = True) -> tuple[ModelSpec, OpenSetClassifier]:
    spec = model_spec(cfg, data)
    model = build_classifier(spec)
    if cfg.long_tail.loss in SIGMOID_LOSSES:
        init_sigmoid_bias(model.head.fc)
    if cfg.transfer.pretrained is not None:
        try:
            report = load_pretrained(model.backbone, cfg.transfer.pretrained)
        except PretrainedError as exc:
            raise UserError(f"--pretrained {exc}") from None
        if report["source"] == "torchvision" and spec.in_channels == 3:
            # the weights were learned on images normalised by ImageNet's statistics
            spec = dataclasses.replace(spec, mean=IMAGENET_MEAN, std=IMAGENET_STD)
            model.mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1))
            model.std.copy_(torch.tensor(IMAGENET_STD).view(1, -1, 1, 1))
        if progress:
            print(f"--pretrained: {report['loaded']} backbone tensors from "
                  f"{cfg.transfer.pretrained} ({report['source']}); a new head", flush=True)
    return spec, model


def classification_term(cfg: LongTailConfig, class_counts: list[int] | None) -> torch.nn.Module | None:
    """The CE term's replacement under --loss cb-* or --logit-adjust (None: plain CE); both
    need the training class counts."""
    if cfg.logit_adjust > 0:
        return LogitAdjustedLoss(class_counts, cfg.logit_adjust)
    if cfg.loss != "ce":
        return build_class_balanced(cfg.loss, class_counts, cfg.cb_beta, cfg.focal_gamma)
    return None


def build_loss(cfg: TrainConfig, class_counts: list[int] | None = None) -> torch.nn.Module:
    """The method's loss from a resolved config: the task loss, wrapped by SLA and/or RKD."""
    loss = LOSSES[cfg.task].from_config(cfg, classification_term(cfg.long_tail, class_counts))
    if cfg.method == "sla":
        loss = SelfLabelAugmentationLoss(loss, cfg.sla.transform, cfg.sla.temperature,
                                         cfg.sla.aggregate_loss)
    if cfg.rkd.teacher is not None:
        loss = RelationalDistillationLoss(loss, cfg.rkd.distance_weight, cfg.rkd.angle_weight)
    return loss
