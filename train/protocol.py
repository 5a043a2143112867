"""`python -m train.protocol`: the standard open-set protocol, all methods in one run.

Five random 6/4 splits (split seeds 0..4); per split, softmax (scored by MSP and by MLS),
RPL and ARPL are trained on the same data with the same budget. Every `python -m train` flag
applies to all runs (except --method and --split-seed, which the protocol sets). Writes per-run directories,
`protocol.json`, a Markdown table `protocol.md` (mean +- std) and `protocol.png`.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from train.cli import build_parser, parse_config
from train.errors import UserError
from train.losses import LOSSES


def rows_of(method: str, metrics: dict) -> dict[str, dict]:
    """One table row per (method, served score): softmax gives both MSP and MLS rows."""
    scores = ("msp", "mls") if method == "softmax" else (metrics["score"],)
    return {f"{method} ({score})": {"closed_acc": metrics["closed_acc"],
                                     **metrics["scores"][score]} for score in scores}


def summarise(results: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for row, runs in results.items():
        summary[row] = {}
        for key in ("closed_acc", "auroc", "oscr"):
            values = np.array([r[key] for r in runs])
            summary[row][key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1))
                                 if len(values) > 1 else 0.0, "values": values.tolist()}
    return summary


def markdown(summary: dict[str, dict], n_splits: int) -> str:
    lines = [f"| method (score) | closed-set acc | AUROC | OSCR |  (mean +- std over {n_splits} splits)",
             "|---|---|---|---|"]
    for row, stats in summary.items():
        cells = [f"{stats[k]['mean']:.4f} +- {stats[k]['std']:.4f}" for k in ("closed_acc", "auroc", "oscr")]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("auroc", "oscr")):
        means = [summary[n][key]["mean"] for n in names]
        ax.bar(names, means, yerr=[summary[n][key]["std"] for n in names], capsize=4)
        for i, n in enumerate(names):
            ax.scatter([i] * len(summary[n][key]["values"]), summary[n][key]["values"], c="k", s=8)
        ax.set_ylim(min(means) - 0.05, 1.0)
        ax.set_title(key.upper())
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m train.protocol", __doc__)
    parser.add_argument("--splits", type=int, default=5, help="split seeds 0..N-1")
    parser.add_argument("--methods", default=",".join(LOSSES), help="comma-separated methods")
    parser.set_defaults(out="runs/protocol")
    try:
        base, extra = parse_config(argv, parser)
        methods = list(dict.fromkeys(m.strip() for m in extra["methods"].split(",")))
        if extra["splits"] < 1:
            raise UserError(f"--splits must be >= 1, got {extra['splits']}")
        bad = [m for m in methods if m not in LOSSES]
        if bad:
            raise UserError(f"unknown method(s) {bad}; choose from {', '.join(LOSSES)}")
        from train.run import run

        out = Path(base.out)
        results: dict[str, list[dict]] = {}
        for split_seed in range(extra["splits"]):
            for method in methods:
                cfg = dataclasses.replace(base, method=method, split_seed=split_seed,
                                          out=str(out / f"split{split_seed}" / method))
                metrics = run(cfg)
                for row, values in rows_of(method, metrics).items():
                    results.setdefault(row, []).append({**values, "split_seed": split_seed,
                                                        "train_seconds": metrics["train_seconds"]})
                print(f"split {split_seed} {method}: acc {metrics['closed_acc']:.4f} "
                      f"auroc {metrics['auroc']:.4f} oscr {metrics['oscr']:.4f}", flush=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = summarise(results)
    table = markdown(summary, extra["splits"])
    (out / "protocol.json").write_text(json.dumps({"config": base.to_dict(), "summary": summary,
                                                   "runs": results}, indent=2))
    (out / "protocol.md").write_text(table)
    plot(summary, out / "protocol.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
