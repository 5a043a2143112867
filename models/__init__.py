"""nn.Modules only: backbones, heads, the classifier, and how to build one from a spec.

Nothing here imports train/, export/ or handlers/; a checkpoint's `model_spec` dict is enough
to rebuild the network anywhere.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from models.backbones import BACKBONES
from models.classifier import OpenSetClassifier
from models.detectors import DETECTORS, build_detector
from models.linear_head import LinearHead
from models.reciprocal_points import ReciprocalPointHead
from models.sla import NUM_VIEWS, AggregatedClassifier


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a classifier; stored in every checkpoint."""

    arch: str
    in_channels: int
    num_classes: int
    head: str  # "linear" | "reciprocal"
    width: float = 1.0
    variant: str = "arpl"  # reciprocal head only
    points_per_class: int = 1  # reciprocal head only
    score: str = "mls"
    feature_scale: float = 0.0  # reciprocal head only; > 0 L2-normalises z to this norm
    sla_transform: str = "none"  # rotation | permutation: adds the SLA joint head (N*M outputs)
    # post-hoc detector that computes the served unknown_score (models/detectors); "none" = the
    # head's own `score`. Its fitted state (k-NN bank, class means, ...) is in the state dict.
    detector: str = "none"
    knn_k: int = 1  # knn / fusion: score by the k-th nearest bank vector
    bank_size: int = 1  # knn / fusion: rows of the feature bank
    mean: tuple[float, ...] = field(default=(0.5,))
    std: tuple[float, ...] = field(default=(0.5,))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        data = dict(data, mean=tuple(data["mean"]), std=tuple(data["std"]))
        return cls(**data)


def build_classifier(spec: ModelSpec) -> OpenSetClassifier:
    if spec.arch not in BACKBONES:
        raise ValueError(f"unknown arch {spec.arch!r}; choose from {sorted(BACKBONES)}")
    backbone = BACKBONES[spec.arch](spec.in_channels, spec.width)
    if spec.head == "linear":
        head = LinearHead(backbone.embed_dim, spec.num_classes, spec.score)
    elif spec.head == "reciprocal":
        head = ReciprocalPointHead(backbone.embed_dim, spec.num_classes, spec.points_per_class,
                                   spec.variant, spec.score, spec.feature_scale)
    else:
        raise ValueError(f"unknown head {spec.head!r}; choose from linear, reciprocal")
    joint_head = None
    if spec.sla_transform != "none":
        if spec.sla_transform not in NUM_VIEWS:
            raise ValueError(f"unknown SLA transform {spec.sla_transform!r}; "
                             f"choose from none, {', '.join(NUM_VIEWS)}")
        joint_head = nn.Linear(backbone.embed_dim, spec.num_classes * NUM_VIEWS[spec.sla_transform])
    detector = None
    if spec.detector != "none":
        detector = build_detector(spec.detector, backbone.embed_dim, spec.num_classes, spec.knn_k,
                                  spec.bank_size)
    return OpenSetClassifier(backbone, head, spec.mean, spec.std, joint_head, detector)


__all__ = ["ModelSpec", "build_classifier", "DETECTORS", "build_detector", "OpenSetClassifier", "LinearHead",
           "ReciprocalPointHead", "AggregatedClassifier", "BACKBONES"]
