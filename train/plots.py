"""Plots every run writes: the ROC curve and the unknown-score histogram."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from train.metrics import roc_points  # noqa: E402


def plot_roc(known: np.ndarray, unknown: np.ndarray, auroc: float, path: Path, title: str) -> None:
    false_alarm, detection = roc_points(known, unknown)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(false_alarm, detection, label=f"AUROC {auroc:.4f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="known images flagged unknown", ylabel="unknown images flagged unknown",
           title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_score_histogram(known: np.ndarray, unknown: np.ndarray, threshold: float,
                         path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.histogram_bin_edges(np.concatenate([known, unknown]), bins=60)
    ax.hist(known, bins=bins, alpha=0.6, density=True, label=f"known classes (n={len(known)})")
    if len(unknown):  # closed-set runs have none
        ax.hist(unknown, bins=bins, alpha=0.6, density=True, label=f"unknown classes (n={len(unknown)})")
    ax.axvline(threshold, c="k", ls="--", label=f"threshold {threshold:.3g}")
    ax.set(xlabel="unknown_score (higher = more unknown)", ylabel="density", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_class_recall(recall: dict[str, float], train_counts: dict[str, int], path: Path,
                          title: str) -> None:
    """Per-class test recall as bars, classes in descending training count, counts on top."""
    names = sorted(recall, key=lambda n: -train_counts[n])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(names) + 1.5), 3.5))
    bars = ax.bar(names, [recall[n] for n in names])
    for bar, name in zip(bars, names):
        ax.annotate(f"n={train_counts[name]}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.set(xlabel="class (most frequent in training first)", ylabel="test recall",
           ylim=(0, 1.1), title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_run(out: Path, cfg, metrics: dict, known: np.ndarray, unknown: np.ndarray,
             threshold: float) -> None:
    """A run's plots: ROC (open-set runs), served-score histogram, per-class recall."""
    title = f"{cfg.method} ({metrics['score']}) on {metrics['dataset']}"
    if metrics["auroc"] is not None:  # closed-set runs have no unknowns to draw
        plot_roc(known, unknown, metrics["auroc"], out / "roc.png", title)
    plot_score_histogram(known, unknown, threshold, out / "unknown_scores.png", title)
    lt = cfg.long_tail
    variant = (cfg.method + ("" if lt.loss == "ce" else f" + {lt.loss}")
               + (" + M2m" if lt.m2m.enabled else ""))
    plot_per_class_recall(metrics["per_class_recall"], metrics["train_counts"],
                          out / "per_class_recall.png", f"{variant} on {metrics['dataset']}, rho "
                          f"{lt.imbalance:g}: balanced acc {metrics['balanced_acc']:.3f}")
