"""Open-set evaluation metrics. Scores follow the serving convention: higher = more unknown."""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_curve


def closed_set_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of known test images whose predicted class is right."""
    return float(np.mean(predictions == labels)) if len(labels) else float("nan")


def auroc(known_scores: np.ndarray, unknown_scores: np.ndarray) -> float:
    """P(an unknown scores higher than a known), ties count 1/2 (Mann-Whitney U / (n_k n_u))."""
    n_known, n_unknown = len(known_scores), len(unknown_scores)
    if n_known == 0 or n_unknown == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([known_scores, unknown_scores]))  # average ranks for ties
    u_unknown = ranks[n_known:].sum() - n_unknown * (n_unknown + 1) / 2
    return float(u_unknown / (n_known * n_unknown))


def oscr(known_scores: np.ndarray, known_correct: np.ndarray, unknown_scores: np.ndarray) -> float:
    """Open-Set Classification Rate (Dhamija et al. 2018): area under CCR(t) vs FPR(t).

    CCR(t) = #{known, correct, score <= t} / N_known, FPR(t) = #{unknown, score <= t} / N_unknown.
    Integrating CCR over FPR gives (1 / (N_k N_u)) * sum over correct knowns i and unknowns u of
    [s_u > s_i] + [s_u == s_i] / 2, i.e. accuracy * AUROC(correct knowns vs unknowns).
    """
    correct = np.asarray(known_correct, dtype=bool)
    if len(known_scores) == 0 or len(unknown_scores) == 0:
        return float("nan")
    if not correct.any():
        return 0.0
    return float(correct.mean() * auroc(known_scores[correct], unknown_scores))


def roc_points(known_scores: np.ndarray, unknown_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-alarm rate on knowns, detection rate on unknowns) over every threshold, for plots."""
    is_unknown = np.concatenate([np.zeros(len(known_scores)), np.ones(len(unknown_scores))])
    false_alarm, detection, _ = roc_curve(is_unknown, np.concatenate([known_scores, unknown_scores]))
    return false_alarm, detection
