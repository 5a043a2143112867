"""Fit every post-hoc detector (models/detectors) on one trained model and score with each.

The detectors see only known-class data: the training split (k-NN bank, class means,
covariance, principal subspace) and, for fusion, the known validation images. Unknown
images are scored, never fitted on.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.detectors import build_detector
from train.metrics import auroc

# scores a head already defines (models/linear_head.py, models/reciprocal_points.py) are not
# recomputed; every other detector of the registry is added next to them
SUITE = ("msp", "mls", "energy", "knn", "mahalanobis", "vim", "fusion")
KNN_SWEEP_K = (1, 2, 5, 10, 20, 50)
KNN_SWEEP_BANK = (64, 128, 256, 512, 1024, 2048)


def as_outputs(prediction: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The tensors a detector reads, from train/evaluate.py: predict()'s numpy arrays."""
    return {key: torch.from_numpy(prediction[key]) for key in ("logits", "embedding")}


def fit_detector(name: str, train: dict[str, np.ndarray], labels: np.ndarray,
                 val: dict[str, np.ndarray], knn_k: int, bank_size: int, seed: int,
                 temperature: float = 1.0) -> nn.Module:
    """A fitted detector on the embedding/logits of `train`; bank_size is capped by the
    training set; `temperature` is the one the model was trained with (energy, ViM)."""
    bank_size = min(bank_size, len(labels))
    detector = build_detector(name, train["embedding"].shape[1], int(labels.max()) + 1, knn_k,
                              bank_size, temperature)
    return detector.fit(as_outputs(train), torch.from_numpy(labels), as_outputs(val), seed)


@torch.no_grad()
def add_suite_scores(train: dict[str, np.ndarray], labels: np.ndarray,
                     val: dict[str, np.ndarray], scored: list[dict[str, np.ndarray]],
                     knn_k: int, bank_size: int, seed: int, temperature: float = 1.0) -> None:
    """Add `score:NAME` for every suite detector the head does not define to each of `scored`."""
    for name in SUITE:
        if f"score:{name}" in scored[0]:
            continue
        detector = fit_detector(name, train, labels, val, knn_k, bank_size, seed, temperature)
        for prediction in scored:
            prediction[f"score:{name}"] = detector(as_outputs(prediction)).numpy()


@torch.no_grad()
def knn_sweep(train: dict[str, np.ndarray], labels: np.ndarray, known: dict[str, np.ndarray],
              unknown: dict[str, np.ndarray], seed: int) -> dict[str, float]:
    """Test AUROC of k-NN for every (k, bank size) of the sweep: `k{K}_bank{N}` -> AUROC
    (reported to show how the score depends on them; the served k and bank are flags)."""
    result = {}
    for bank in (*[b for b in KNN_SWEEP_BANK if b < len(labels)], len(labels)):
        for k in (k for k in KNN_SWEEP_K if k <= bank):
            detector = fit_detector("knn", train, labels, known, k, bank, seed)
            result[f"k{k}_bank{bank}"] = auroc(detector(as_outputs(known)).numpy(),
                                               detector(as_outputs(unknown)).numpy())
    return result
