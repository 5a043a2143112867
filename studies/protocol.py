"""`python -m studies.protocol`: the standard open-set protocol, all methods in one run.

Five random 6/4 splits (split seeds 0..4); per split, softmax (scored by MSP and by MLS),
RPL and ARPL (and SLA with --methods ...,sla) are trained on the same data with the same
budget, for every training seed of --train-seeds. With --num-known equal to the class count it
is a closed-set comparison (accuracy only). Every `python -m train` flag applies to all runs
(except --method, --seed and --split-seed, which the protocol sets). Writes per-run
directories, `protocol.json`, a Markdown table `protocol.md` (mean +- std, then the AUROC of
every detector), `protocol.png` and the k-NN bank sweep `protocol_knn_bank.png`.
"""
from __future__ import annotations

import sys
from argparse import ArgumentParser
from pathlib import Path

from cli_errors import UserError
from studies import driver
from studies.detectors import detector_run, detector_section, knn_sweep_summary, plot_knn_sweep
from train.config import TrainConfig, non_negative, positive
from train.losses import LOSSES

FIGURES = ("val_acc", "closed_acc", "auroc", "oscr")
PANELS = {"closed_acc": "closed-set accuracy", "auroc": "AUROC", "oscr": "OSCR"}


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--splits", type=int, default=5, help="split seeds 0..N-1")
    parser.add_argument("--methods", default="softmax,rpl,arpl", help="comma-separated methods")
    parser.add_argument("--train-seeds", default=None,
                        help="comma-separated training seeds, each run on every split "
                             "(default: --seed)")
    parser.add_argument("--seed-per-split", action="store_true",
                        help="also vary the weight/batch seed: seed = --seed + split seed")


def cells(base: TrainConfig, extra: dict) -> list[driver.Cell]:
    """Training seed x split x method; run directories OUT/[seedS/]splitK/METHOD."""
    methods = driver.parse_list(extra["methods"], str, "--methods")
    bad = [m for m in methods if m not in LOSSES]
    if bad:
        raise UserError(f"unknown method(s) {bad}; choose from {', '.join(LOSSES)}")
    positive({"splits": extra["splits"]})
    train_seeds = ([base.seed] if extra["train_seeds"] is None
                   else driver.parse_list(extra["train_seeds"], int, "--train-seeds"))
    non_negative({"train-seeds": min(train_seeds)})
    grid = []
    for train_seed in train_seeds:
        for split_seed in range(extra["splits"]):
            seed = train_seed + split_seed if extra["seed_per_split"] else train_seed
            for method in methods:
                run_dir = Path(base.out) / f"split{split_seed}" / method
                if len(train_seeds) > 1:
                    run_dir = Path(base.out) / f"seed{train_seed}" / f"split{split_seed}" / method
                grid.append(driver.Cell({"seed": seed, "split": split_seed, "method": method},
                                        base.override(method=method, split_seed=split_seed,
                                                      seed=seed, out=str(run_dir))))
    return grid


def rows_of(method: str, metrics: dict) -> dict[str, dict]:
    """One table row per (method, served score): softmax gives both MSP and MLS rows, SLA its
    single-pass distilled head (SD) and its M-pass aggregated inference (AG).

    val_acc is the validation accuracy of the selected checkpoint: what a sweep over settings
    may be chosen by without looking at the test split (None for runs written before it)."""
    if method == "sla":
        ag = metrics["aggregated"]
        name = f"sla-{metrics['task']}"
        return {f"{name}+SD ({metrics['score']})": {"val_acc": metrics.get("best_val_acc"),
                                                    "closed_acc": metrics["closed_acc"],
                                                    **metrics["scores"][metrics["score"]]},
                f"{name}+AG ({ag['score']})": {"val_acc": ag.get("val_acc"),
                                               "closed_acc": ag["closed_acc"],
                                               **ag["scores"][ag["score"]]}}
    closed_set = metrics["auroc"] is None  # the score makes no difference to accuracy
    scores = (metrics["score"],)
    if method == "softmax" and not closed_set:  # the closed-set baselines, and what it serves
        scores = tuple(dict.fromkeys(("msp", "mls", metrics["score"])))
    return {f"{method} ({score})": {"val_acc": metrics.get("best_val_acc"),
                                     "closed_acc": metrics["closed_acc"],
                                     **metrics["scores"][score]} for score in scores}


def markdown(summary: dict[str, dict], n_runs: int) -> str:
    lines = [f"| method (score) | closed-set acc | AUROC | OSCR | val acc |  (mean +- std over "
             f"{n_runs} runs (splits x training seeds); val acc: the validation split, for "
             "choosing settings)",
             "|---|---|---|---|---|"]
    for row, stats in summary.items():
        cells = [driver.stats_text(stats[key]) for key in ("closed_acc", "auroc", "oscr", "val_acc")]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(base: TrainConfig, extra: dict, results: driver.Results) -> driver.Report:
    runs: dict[str, list[dict]] = {}
    per_run = []
    for cell, metrics in results:
        where = {"split_seed": cell.cfg.split_seed, "seed": cell.cfg.seed}
        for row, values in rows_of(cell.cfg.method, metrics).items():
            runs.setdefault(row, []).append({**values, **where,
                                             "train_seconds": metrics["train_seconds"]})
        per_run.append(detector_run(cell.cfg.method, **where, metrics=metrics))
    summary = {row: driver.summarise_runs(row_runs, FIGURES) for row, row_runs in runs.items()}
    sweep = knn_sweep_summary(per_run)
    n_runs = len(next(iter(runs.values())))  # every row has one run per (seed, split)
    return driver.Report(
        table=markdown(summary, n_runs) + detector_section([(per_run, "softmax", "msp")]),
        data={"summary": summary, "runs": runs, "per_run": per_run, "knn_sweep": sweep},
        panels={title: {row: summary[row][key] for row in summary} for key, title in PANELS.items()},
        extra_plots={"protocol_knn_bank.png": lambda path: plot_knn_sweep(sweep, path)} if sweep
        else {})


STUDY = driver.Study("protocol", __doc__, add_arguments, {"out": "runs/protocol"}, cells, report)


def main(argv: list[str] | None = None) -> int:
    return driver.main(STUDY, argv)


if __name__ == "__main__":
    sys.exit(main())
