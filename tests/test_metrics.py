import numpy as np
import pytest

from train.calibration import accept_rate, threshold_for_accept_rate
from train.metrics import auroc, closed_set_accuracy, oscr


def test_auroc_by_hand():
    # pairs (unknown > known): 0.35>0.1, 0.8>0.1, 0.8>0.4; 0.35<0.4 -> 3 of 4
    assert auroc(np.array([0.1, 0.4]), np.array([0.35, 0.8])) == pytest.approx(0.75)


def test_auroc_ties_count_half_and_extremes():
    assert auroc(np.array([0.5]), np.array([0.5])) == pytest.approx(0.5)
    assert auroc(np.array([0.0, 0.1]), np.array([0.2, 0.3])) == 1.0
    assert auroc(np.array([0.2, 0.3]), np.array([0.0, 0.1])) == 0.0


def test_oscr_by_hand():
    known = np.array([0.1, 0.2, 0.6, 0.4])
    correct = np.array([True, True, False, True])
    unknown = np.array([0.3, 0.5, 0.7])
    # CCR vs FPR steps: 0.5 on [0, 1/3], 0.75 on [1/3, 1] -> 1/6 + 1/2 = 2/3
    assert oscr(known, correct, unknown) == pytest.approx(2 / 3)


def test_oscr_matches_threshold_sweep():
    rng = np.random.default_rng(1)
    known, unknown = rng.normal(0, 1, 200), rng.normal(1, 1, 150)
    correct = rng.random(200) < 0.9
    thresholds = np.sort(np.concatenate([[-np.inf], known, unknown]))
    ccr = [(correct & (known <= t)).sum() / len(known) for t in thresholds]
    fpr = [(unknown <= t).sum() / len(unknown) for t in thresholds]
    assert oscr(known, correct, unknown) == pytest.approx(np.trapezoid(ccr, fpr), abs=1e-9)


def test_oscr_is_zero_without_correct_predictions():
    assert oscr(np.array([0.1]), np.array([False]), np.array([0.9])) == 0.0


def test_closed_set_accuracy():
    assert closed_set_accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75


def test_threshold_accepts_the_asked_fraction():
    scores = np.arange(1, 21, dtype=float)
    threshold = threshold_for_accept_rate(scores, 0.95)
    assert threshold == 19.0
    assert accept_rate(scores, threshold) == 0.95
    assert threshold_for_accept_rate(scores, 1.0) == 20.0


def test_threshold_rejects_bad_rate():
    with pytest.raises(ValueError, match="accept_rate"):
        threshold_for_accept_rate(np.ones(3), 0.0)
