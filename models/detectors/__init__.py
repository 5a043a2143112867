"""Post-hoc unknown detectors: one method per module, all used the same way.

    detector = build_detector(name, embed_dim, num_classes, knn_k, bank_size)
    detector.fit(train_outputs, train_labels, val_outputs, seed)   # known-class data only
    scores = detector(outputs)                                      # B, higher = more unknown

`outputs` is the classifier's output dict (`logits`, `embedding`, ...). A fitted detector is a
plain nn.Module whose state (bank, means, ...) lives in buffers, so it is saved in the
checkpoint and exported inside the ONNX graph like any layer.
"""
from __future__ import annotations

from torch import nn

from models.detectors.fusion import LogitKnnFusion
from models.detectors.knn import KnnScore
from models.detectors.logit_scores import EnergyScore, MaxLogitScore, MaxSoftmaxScore
from models.detectors.mahalanobis import MahalanobisScore
from models.detectors.vim import VimScore

# name -> builder(embed_dim, num_classes, knn_k, bank_size, temperature)
DETECTORS = {
    "msp": lambda d, k, knn_k, bank, t: MaxSoftmaxScore(),
    "mls": lambda d, k, knn_k, bank, t: MaxLogitScore(),
    "energy": lambda d, k, knn_k, bank, t: EnergyScore(t),
    "knn": lambda d, k, knn_k, bank, t: KnnScore(d, bank, knn_k),
    "mahalanobis": lambda d, k, knn_k, bank, t: MahalanobisScore(d, k),
    "vim": lambda d, k, knn_k, bank, t: VimScore(d, temperature=t),
    "fusion": lambda d, k, knn_k, bank, t: LogitKnnFusion(d, bank, knn_k),
}


def build_detector(name: str, embed_dim: int, num_classes: int, knn_k: int = 1,
                   bank_size: int = 1, temperature: float = 1.0) -> nn.Module:
    """An unfitted detector; its buffers have their final shapes (a checkpoint loads into it,
    the training temperature included)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
    return DETECTORS[name](embed_dim, num_classes, knn_k, bank_size, temperature)


__all__ = ["DETECTORS", "build_detector", "KnnScore", "MahalanobisScore", "VimScore",
           "LogitKnnFusion", "EnergyScore", "MaxLogitScore", "MaxSoftmaxScore"]
