"""Open-set splits: known classes are split train/val/test; unknown classes reach test only."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cli_errors import UserError


@dataclass(frozen=True)
class OpenSetSplit:
    known_classes: tuple[int, ...]  # original class ids; position = training label
    train: np.ndarray  # indices into the dataset, known classes only
    val: np.ndarray  # known classes only: model selection and threshold calibration
    test_known: np.ndarray
    test_unknown: np.ndarray  # every image of every unknown class

    def relabel(self, labels: np.ndarray) -> np.ndarray:
        """Original class ids -> 0..K-1 in `known_classes` order (-1 for unknown classes)."""
        lookup = np.full(int(labels.max()) + 1, -1, dtype=np.int64)
        lookup[list(self.known_classes)] = np.arange(len(self.known_classes))
        return lookup[labels]


def draw_known_classes(num_classes: int, num_known: int, split_seed: int) -> tuple[int, ...]:
    """The split_seed-th random choice of `num_known` known classes (the standard 6/4 splits).

    num_known == num_classes is a closed-set run: every class known, no open-set figures."""
    if not 1 < num_known <= num_classes:
        raise UserError(f"--num-known must be 2..{num_classes}, got {num_known}")
    if num_known == num_classes:
        return tuple(range(num_classes))
    rng = np.random.default_rng(split_seed)
    return tuple(sorted(int(c) for c in rng.permutation(num_classes)[:num_known]))


def parse_known(text: str, class_names: Sequence[str]) -> tuple[int, ...]:
    """'0,1,2' -> class indices. Items are class names; a position (0-based) is accepted only
    when no class name is a number, so that '9' can never mean both class "9" and position 9."""
    names = list(class_names)
    positions_allowed = not any(name.isdigit() for name in names)
    known = []
    for item in (part.strip() for part in text.split(",")):
        if item in names:
            known.append(names.index(item))
        elif positions_allowed and item.isdigit() and int(item) < len(names):
            known.append(int(item))
        else:
            raise UserError(f"--known names class {item!r}, which the dataset does not have "
                            f"(classes: {', '.join(names)})")
    if len(set(known)) != len(known) or len(known) < 2:
        raise UserError(f"--known needs at least 2 distinct classes, got {text!r}")
    return tuple(known)  # every class listed = a closed-set run


def open_set_split(labels: np.ndarray, known_classes: Sequence[int], split_seed: int,
                   val_fraction: float = 0.1, test_fraction: float = 0.2) -> OpenSetSplit:
    """Stratified split of each known class; unknown classes (maybe none) go to test in full."""
    rng = np.random.default_rng(10_000 + split_seed)
    train, val, test = [], [], []
    for cls in known_classes:
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(test_fraction * len(members)))
        n_val = max(1, int(round(val_fraction * len(members))))
        if len(members) - n_test - n_val < 1:
            raise UserError(f"class {cls} has only {len(members)} images; too few to split")
        test.append(members[:n_test])
        val.append(members[n_test:n_test + n_val])
        train.append(members[n_test + n_val:])
    unknown = np.flatnonzero(~np.isin(labels, list(known_classes)))
    return OpenSetSplit(tuple(int(c) for c in known_classes), np.sort(np.concatenate(train)),
                        np.sort(np.concatenate(val)), np.sort(np.concatenate(test)), unknown)


def long_tail_counts(n_max: int, rho: float, num_classes: int) -> list[int]:
    """Per-class training counts of a long-tailed set, most frequent class first.

    n_i = n_max * (1 / rho)^(i / (C - 1)), i = 0..C-1, floored (as in the M2m / LDAM code),
    at least 1 image per class. rho = n_max / n_min is the imbalance ratio; rho = 1 keeps all.
    """
    if rho < 1:
        raise UserError(f"--imbalance must be >= 1 (n_max / n_min), got {rho}")
    if num_classes == 1:
        return [n_max]
    return [max(1, int(n_max * (1 / rho) ** (i / (num_classes - 1)) + 1e-9))
            for i in range(num_classes)]


def long_tail_subset(train_idx: np.ndarray, labels: np.ndarray, rho: float,
                     order: Sequence[int], seed: int) -> np.ndarray:
    """Subsample the training indices so that class order[i] keeps long_tail_counts(...)[i].

    `order` lists every training class, most frequent first; n_max is the largest class's
    count before subsampling. Which images a class keeps is a seeded random draw.
    """
    present = sorted(set(labels[train_idx].tolist()))
    if sorted(order) != present:
        raise UserError(f"long-tail order {list(order)} must list each training class once "
                        f"({present})")
    n_max = int(np.bincount(labels[train_idx]).max())
    counts = long_tail_counts(n_max, rho, len(order))
    rng = np.random.default_rng(20_000 + seed)
    kept = []
    for cls, count in zip(order, counts):
        members = rng.permutation(train_idx[labels[train_idx] == cls])
        kept.append(members[:count])
    return np.sort(np.concatenate(kept))
