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


# Shot groups by a class's training-image count. The M2m / Decoupling convention is
# many > 100, few < 20; on mnist5k-LT (n_max = 350) rho = 10 has no class under 20 images
# (its rarest has 35), so "few" is < 40 here: rho = 100 -> 3 many / 2 medium / 5 few classes,
# rho = 10 -> 5 / 4 / 1.
MANY_SHOT_ABOVE = 100
FEW_SHOT_BELOW = 40


def per_class_recall(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class, K; NaN for a class without test images."""
    recall = np.full(num_classes, np.nan)
    for k in range(num_classes):
        members = labels == k
        if members.any():
            recall[k] = float(np.mean(predictions[members] == k))
    return recall


def balanced_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean per-class recall over the classes that have test images."""
    return float(np.nanmean(per_class_recall(predictions, labels, num_classes)))


def shot_groups(train_counts: np.ndarray, many_above: int = MANY_SHOT_ABOVE,
                few_below: int = FEW_SHOT_BELOW) -> dict[str, list[int]]:
    """Class indices per group: many (> many_above images), medium, few (< few_below)."""
    counts = np.asarray(train_counts)
    return {"many": np.flatnonzero(counts > many_above).tolist(),
            "medium": np.flatnonzero((counts <= many_above) & (counts >= few_below)).tolist(),
            "few": np.flatnonzero(counts < few_below).tolist()}


def long_tail_metrics(predictions: np.ndarray, labels: np.ndarray, train_counts: np.ndarray,
                      class_names: list[str]) -> dict:
    """Balanced accuracy, per-class recall and the many/medium/few-shot group accuracies.

    A group's accuracy is the mean recall of its classes (None when the group is empty)."""
    recall = per_class_recall(predictions, labels, len(class_names))
    groups = shot_groups(train_counts)
    return {
        "balanced_acc": float(np.nanmean(recall)),
        "per_class_recall": {name: float(r) for name, r in zip(class_names, recall)},
        "train_counts": {name: int(n) for name, n in zip(class_names, train_counts)},
        "shot_groups": {group: {"classes": [class_names[k] for k in members],
                                "acc": float(np.nanmean(recall[members])) if members else None}
                        for group, members in groups.items()},
        "shot_thresholds": {"many_above": MANY_SHOT_ABOVE, "few_below": FEW_SHOT_BELOW},
    }
