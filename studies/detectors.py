"""The detector tables and the k-NN sweep summary, shared by the protocol and long-tail studies.

Every run reports the AUROC of the whole detector suite on the same model (metrics.json
`scores`); a study passes one record per run, `detector_run(...)`, and gets the table of
every detector per method (summarised by the driver's one rule) with paired win counts
against a baseline method.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from studies.driver import MISSING, grouped, stats_text, summarise

HEADER = "\nAUROC of every detector on the same models (served score in bold):\n"


def detector_run(name: str, split_seed: int, seed: int, metrics: dict, **labels) -> dict:
    """What the detector tables and the k-NN sweep need of one run (`name`: its table row)."""
    return {"method": name, **labels, "split_seed": split_seed, "seed": seed,
            "score": metrics["score"], "scores": metrics["scores"],
            "knn_sweep": metrics.get("knn_sweep")}


def has_unknowns(per_run: list[dict]) -> bool:
    """Whether any run scored unknowns (a closed-set run has no AUROC to tabulate)."""
    return any(s["auroc"] is not None for r in per_run for s in r["scores"].values())


def detector_section(groups: list[tuple[list[dict], str, str | None]]) -> str:
    """The detector tables under a study's table, one per (runs, baseline, baseline score)
    group; empty when no run has unknowns."""
    if not has_unknowns([r for runs, _, _ in groups for r in runs]):
        return ""
    return HEADER + "".join("\n" + detector_table(*group) for group in groups)


def detector_table(per_run: list[dict], baseline: str = "softmax",
                   baseline_score: str | None = "msp") -> str:
    """AUROC of every detector of the suite per method (mean +- std over its runs), then how
    often each method's served score beats the baseline method's `baseline_score` (its best
    detector by mean AUROC when None), paired by (split, seed)."""
    methods = grouped(per_run, lambda r: r["method"])
    detectors = list(dict.fromkeys(d for r in per_run for d in r["scores"]))
    stats = {method: {name: summarise([r["scores"].get(name, {}).get("auroc") for r in runs])
                      for name in detectors} for method, runs in methods.items()}
    lines = ["| method (served) | " + " | ".join(detectors) + " |",
             "|---|" + "---|" * len(detectors)]
    for method, runs in methods.items():
        served = runs[0]["score"]
        cells = [stats_text(stats[method][name]) for name in detectors]
        cells = [f"**{text}**" if name == served and text != MISSING else text
                 for name, text in zip(detectors, cells)]
        lines.append(f"| {method} ({served}) | " + " | ".join(cells) + " |")
    return "\n".join(lines + paired_wins(per_run, stats, baseline, baseline_score)) + "\n"


def paired_wins(per_run: list[dict], stats: dict, baseline: str,
                baseline_score: str | None) -> list[str]:
    """One line per method: on how many (split, seed) pairs its served score's AUROC is above
    the baseline's, and the mean difference."""
    means = {name: s["mean"] for name, s in stats.get(baseline, {}).items() if s["mean"] is not None}
    score = baseline_score or max(means, key=means.get, default=None)
    if score not in means:
        return []
    base = {(r["split_seed"], r["seed"]): r["scores"][score]["auroc"] for r in per_run
            if r["method"] == baseline}
    lines = [""]
    for method, runs in grouped(per_run, lambda r: r["method"]).items():
        pairs = [(r["scores"][r["score"]]["auroc"], base[(r["split_seed"], r["seed"])])
                 for r in runs if (r["split_seed"], r["seed"]) in base]
        if method == baseline or not pairs:
            continue
        wins = sum(ours > theirs for ours, theirs in pairs)
        lines.append(f"- {method} ({runs[0]['score']}) above {baseline} ({score}) on {wins}/"
                     f"{len(pairs)} (split, seed) pairs, mean "
                     f"{np.mean([ours - theirs for ours, theirs in pairs]):+.4f}")
    return lines


def knn_sweep_summary(per_run: list[dict]) -> dict[str, dict[str, float]]:
    """method -> "k{K}_bank{N}" -> mean test AUROC over the method's runs (the full training
    split's bank, whose size differs per split, is reported as "k{K}_bankall"); a setting
    only some runs swept is left out."""
    sweeps: dict[str, dict[str, list[float]]] = {}
    for r in per_run:
        sweep = r.get("knn_sweep") or {}
        largest = max((int(key.split("_bank")[1]) for key in sweep), default=0)
        for key, value in sweep.items():
            k, bank = key.split("_bank")
            name = f"{k}_bankall" if int(bank) == largest else key
            sweeps.setdefault(r["method"], {}).setdefault(name, []).append(value)
    runs_of = Counter(r["method"] for r in per_run)
    return {method: {key: summarise(values)["mean"] for key, values in sweep.items()
                     if len(values) == runs_of[method]} for method, sweep in sweeps.items()}


def plot_knn_sweep(summary: dict[str, dict[str, float]], path: Path) -> None:
    """Mean k-NN AUROC against bank size, one line per (method, k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    k1 = [v for sweep in summary.values() for key, v in sweep.items() if key.startswith("k1_")]
    if k1:  # a k beyond a class's bank rows collapses: scale to k = 1
        ax.set_ylim(min(k1) - 0.01, max(k1) + 0.005)
    for method, sweep in summary.items():
        for k in ("k1", "k5", "k20"):
            points = sorted((int(key.split("_bank")[1]), v) for key, v in sweep.items()
                            if key.startswith(f"{k}_bank") and not key.endswith("all"))
            if points:
                ax.plot(*zip(*points), marker="o", label=f"{method} {k}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("feature-bank size (training embeddings)")
    ax.set_ylabel("mean AUROC (k-NN)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
