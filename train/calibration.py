"""Choose the unknown_score threshold on known validation images only (never on unknowns)."""
from __future__ import annotations

import numpy as np


def threshold_for_accept_rate(known_val_scores: np.ndarray, accept_rate: float = 0.95) -> float:
    """Smallest threshold t with #{score <= t} / N >= accept_rate; an image is known iff score <= t."""
    if not 0 < accept_rate <= 1:
        raise ValueError(f"accept_rate must be in (0, 1], got {accept_rate}")
    if len(known_val_scores) == 0:
        raise ValueError("no validation scores to calibrate on")
    return float(np.quantile(known_val_scores, accept_rate, method="inverted_cdf"))


def accept_rate(scores: np.ndarray, threshold: float) -> float:
    """Fraction of images the threshold accepts as known."""
    return float(np.mean(scores <= threshold)) if len(scores) else float("nan")
