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


def test_affine_shift_moves_content_by_the_drawn_translation():
    images = torch.zeros(64, 1, 16, 16)
    images[:, :, 6:10, 6:10] = 1.0  # a 4x4 block centred on (7.5, 7.5)
    moved = random_affine(images, torch.Generator().manual_seed(0), shift=0.2, degrees=0, scale=0)
    assert moved.shape == images.shape
    # the same draws by hand: angle, zoom, then x and y shifts, each U(-0.2, 0.2) of the size;
    # the grid samples the input at output + shift, so the content moves by -shift * 16 pixels
    draws = torch.Generator().manual_seed(0)
    _angle, _zoom, shift_x, shift_y = (torch.rand(64, generator=draws) * 0.4 - 0.2 for _ in range(4))
    mass = moved[:, 0].sum((1, 2))
    assert torch.allclose(mass, torch.full((64,), 16.0), atol=1e-4)  # nothing leaves the image
    columns = (moved[:, 0].sum(1) * torch.arange(16)).sum(1) / mass
    rows = (moved[:, 0].sum(2) * torch.arange(16)).sum(1) / mass
    assert torch.allclose(columns, 7.5 - 16 * shift_x, atol=1e-3)
    assert torch.allclose(rows, 7.5 - 16 * shift_y, atol=1e-3)
