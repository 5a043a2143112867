import numpy as np
import pytest
import torch

from train.augment import augment, random_affine
from train.evaluate import open_set_metrics


def test_open_set_metrics_by_hand():
    known = {"logits": np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]]),
             "unknown_score": np.array([0.1, 0.2, 0.6]),
             "score:mls": np.array([0.1, 0.2, 0.6])}
    unknown = {"logits": np.zeros((2, 2)), "unknown_score": np.array([0.5, 0.9]),
               "score:mls": np.array([0.5, 0.9])}
    metrics = open_set_metrics(known, np.array([0, 1, 1]), unknown, threshold=0.55)
    assert metrics["closed_acc"] == pytest.approx(2 / 3)
    assert metrics["auroc"] == pytest.approx(5 / 6)  # only (0.6 known, 0.5 unknown) is misordered
    assert metrics["oscr"] == pytest.approx(2 / 3)  # both correct knowns rank below both unknowns
    assert metrics["known_accept_rate"] == pytest.approx(2 / 3)
    assert metrics["unknown_reject_rate"] == pytest.approx(0.5)
    assert metrics["scores"]["mls"]["auroc"] == metrics["auroc"]


def test_closed_set_metrics_have_no_open_set_figures():
    known = {"logits": np.array([[2.0, 0.0], [0.0, 3.0]]), "unknown_score": np.array([0.1, 0.2]),
             "score:mls": np.array([0.1, 0.2])}
    empty = {"logits": np.zeros((0, 2)), "unknown_score": np.zeros(0), "score:mls": np.zeros(0)}
    metrics = open_set_metrics(known, np.array([0, 0]), empty, threshold=0.15)
    assert metrics["closed_acc"] == pytest.approx(0.5)
    assert metrics["auroc"] is None and metrics["oscr"] is None
    assert metrics["unknown_reject_rate"] is None and metrics["scores"]["mls"]["auroc"] is None


def test_augment_none_is_identity_and_zero_affine_is_identity():
    images = torch.rand(4, 1, 8, 8)
    generator = torch.Generator().manual_seed(0)
    assert augment(images, "none", generator) is images
    same = random_affine(images, generator, shift=0.0, degrees=0.0, scale=0.0)
    assert torch.allclose(same, images, atol=1e-5)


def test_affine_shift_moves_content():
    images = torch.zeros(64, 1, 16, 16)
    images[:, :, 6:10, 6:10] = 1.0
    moved = random_affine(images, torch.Generator().manual_seed(0), shift=0.2, degrees=0, scale=0)
    assert moved.shape == images.shape
    centres = (moved[:, 0].sum(1) * torch.arange(16)).sum(1) / moved[:, 0].sum((1, 2))
    assert centres.std() > 0.5  # columns of mass spread out across the batch
