"""`python -m train.protocol`: the standard open-set protocol, all methods in one run.

Five random 6/4 splits (split seeds 0..4); per split, softmax (scored by MSP and by MLS),
RPL and ARPL (and SLA with --methods ...,sla) are trained on the same data with the same
budget. With --num-known equal to the class count it is a closed-set comparison (accuracy only). Every `python -m train` flag
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
from cli_errors import UserError
from train.losses import LOSSES


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


def detector_table(per_run: list[dict], baseline: str = "softmax",
                   baseline_score: str | None = "msp") -> str:
    """AUROC of every detector of the suite per method (mean +- std over its runs), then how
    often each method's served score beats the baseline method's `baseline_score` (its best
    detector by mean AUROC when None), paired by (split, seed)."""
    methods = list(dict.fromkeys(r["method"] for r in per_run))
    detectors = list(dict.fromkeys(d for r in per_run for d in r["scores"]))
    means: dict[str, dict[str, float]] = {}
    lines = ["| method (served) | " + " | ".join(detectors) + " |",
             "|---|" + "---|" * len(detectors)]
    for method in methods:
        runs = [r for r in per_run if r["method"] == method]
        cells = []
        for name in detectors:
            values = np.array([r["scores"][name]["auroc"] for r in runs if name in r["scores"]
                               and r["scores"][name]["auroc"] is not None], dtype=float)
            if not len(values):
                cells.append("n/a")
                continue
            means.setdefault(method, {})[name] = float(values.mean())
            bold = "**" if name == runs[0]["score"] else ""
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{bold}{values.mean():.4f} +- {std:.4f}{bold}")
        lines.append(f"| {method} ({runs[0]['score']}) | " + " | ".join(cells) + " |")
    if baseline not in means:
        return "\n".join(lines) + "\n"
    score = baseline_score or max(means[baseline], key=means[baseline].get)
    base = {(r["split_seed"], r["seed"]): r["scores"][score]["auroc"] for r in per_run
            if r["method"] == baseline}
    lines.append("")
    for method in methods:
        pairs = [(r["scores"][r["score"]]["auroc"], base[(r["split_seed"], r["seed"])])
                 for r in per_run if r["method"] == method and (r["split_seed"], r["seed"]) in base]
        if method == baseline or not pairs:
            continue
        served = next(r["score"] for r in per_run if r["method"] == method)
        wins = sum(ours > theirs for ours, theirs in pairs)
        lines.append(f"- {method} ({served}) above {baseline} ({score}) on {wins}/{len(pairs)} "
                     f"(split, seed) pairs, mean {np.mean([o - t for o, t in pairs]):+.4f}")
    return "\n".join(lines) + "\n"


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summarise(results: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for row, runs in results.items():
        summary[row] = {}
        for key in ("val_acc", "closed_acc", "auroc", "oscr"):
            if any(r[key] is None for r in runs):  # closed-set runs: no open-set figures
                summary[row][key] = {"mean": None, "std": None, "values": [r[key] for r in runs]}
                continue
            values = np.array([r[key] for r in runs])
            summary[row][key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1))
                                 if len(values) > 1 else 0.0, "values": values.tolist()}
    return summary


def markdown(summary: dict[str, dict], n_splits: int) -> str:
    lines = [f"| method (score) | closed-set acc | AUROC | OSCR | val acc |  (mean +- std over "
             f"{n_splits} runs (splits x training seeds); val acc: the validation split, for "
             "choosing settings)",
             "|---|---|---|---|---|"]
    for row, stats in summary.items():
        cells = [f"{fmt(stats[k]['mean'])} +- {fmt(stats[k]['std'])}" if stats[k]["mean"] is not None
                 else "n/a" for k in ("closed_acc", "auroc", "oscr", "val_acc")]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    keys = [k for k in ("closed_acc", "auroc", "oscr") if summary[names[0]][k]["mean"] is not None]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        means = [summary[n][key]["mean"] for n in names]
        ax.bar(names, means, yerr=[summary[n][key]["std"] for n in names], capsize=4)
        for i, n in enumerate(names):
            ax.scatter([i] * len(summary[n][key]["values"]), summary[n][key]["values"], c="k", s=8)
        ax.set_ylim(min(means) - 0.05, 1.0)
        ax.set_title({"closed_acc": "closed-set accuracy"}.get(key, key.upper()))
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def knn_sweep_summary(per_run: list[dict]) -> dict[str, dict[str, float]]:
    """method -> "k{K}_bank{N}" -> mean test AUROC over the runs (the full training split's
    bank, whose size differs per split, is reported as "k{K}_bankall")."""
    summary: dict[str, dict[str, list[float]]] = {}
    for r in per_run:
        sweep = r.get("knn_sweep") or {}
        largest = max((int(key.split("bank")[1]) for key in sweep), default=0)
        for key, value in sweep.items():
            k, bank = key.split("_bank")
            name = f"{k}_bankall" if int(bank) == largest else key
            summary.setdefault(r["method"], {}).setdefault(name, []).append(value)
    return {method: {key: float(np.mean(values)) for key, values in sweep.items()
                     if len(values) == sum(r["method"] == method for r in per_run)}
            for method, sweep in summary.items()}


def plot_knn_sweep(summary: dict[str, dict[str, float]], path: Path) -> None:
    """Mean k-NN AUROC against bank size, one line per (method, k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    k1 = [v for sweep in summary.values() for key, v in sweep.items() if key.startswith("k1_")]
    ax.set_ylim(min(k1) - 0.01, max(k1) + 0.005)  # a k beyond a class's bank rows collapses
    for method, sweep in summary.items():
        for k in ("k1", "k5", "k20"):
            points = sorted((int(key.split("bank")[1]), v) for key, v in sweep.items()
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


def parse_seeds(text: str | None, default: int) -> list[int]:
    """"0,1" -> [0, 1]; None -> [default]."""
    if text is None:
        return [default]
    try:
        seeds = list(dict.fromkeys(int(item) for item in text.split(",")))
    except ValueError:
        raise UserError(f"--train-seeds must be comma-separated integers, got {text!r}") from None
    if any(seed < 0 for seed in seeds):
        raise UserError(f"--train-seeds must be >= 0, got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m train.protocol", __doc__)
    parser.add_argument("--splits", type=int, default=5, help="split seeds 0..N-1")
    parser.add_argument("--methods", default="softmax,rpl,arpl", help="comma-separated methods")
    parser.add_argument("--train-seeds", default=None,
                        help="comma-separated training seeds, each run on every split "
                             "(default: --seed)")
    parser.add_argument("--seed-per-split", action="store_true",
                        help="also vary the weight/batch seed: seed = --seed + split seed")
    parser.add_argument("--resume", action="store_true",
                        help="reuse run directories that already hold a finished run of the same "
                             "configuration (an interrupted study continues where it stopped)")
    parser.set_defaults(out="runs/protocol")
    try:
        base, extra = parse_config(argv, parser)
        methods = list(dict.fromkeys(m.strip() for m in extra["methods"].split(",")))
        if extra["splits"] < 1:
            raise UserError(f"--splits must be >= 1, got {extra['splits']}")
        bad = [m for m in methods if m not in LOSSES]
        if bad:
            raise UserError(f"unknown method(s) {bad}; choose from {', '.join(LOSSES)}")
        from train.run import finished_run, run

        train_seeds = parse_seeds(extra["train_seeds"], base.seed)
        out = Path(base.out)
        results: dict[str, list[dict]] = {}
        per_run: list[dict] = []
        for train_seed in train_seeds:
            for split_seed in range(extra["splits"]):
                for method in methods:
                    seed = train_seed + split_seed if extra["seed_per_split"] else train_seed
                    run_dir = out / f"split{split_seed}" / method
                    if len(train_seeds) > 1:
                        run_dir = out / f"seed{train_seed}" / f"split{split_seed}" / method
                    cfg = dataclasses.replace(base, method=method, split_seed=split_seed, seed=seed,
                                              out=str(run_dir))
                    metrics = (extra["resume"] and finished_run(cfg)) or run(cfg)
                    for row, values in rows_of(method, metrics).items():
                        results.setdefault(row, []).append({**values, "split_seed": split_seed,
                                                            "seed": seed,
                                                            "train_seconds": metrics["train_seconds"]})
                    per_run.append({"method": method, "split_seed": split_seed, "seed": seed,
                                    "score": metrics["score"], "scores": metrics["scores"],
                                    "knn_sweep": metrics.get("knn_sweep")})
                    print(f"seed {seed} split {split_seed} {method}: acc {fmt(metrics['closed_acc'])} "
                          f"auroc {fmt(metrics['auroc'])} oscr {fmt(metrics['oscr'])}", flush=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = summarise(results)
    table = markdown(summary, extra["splits"] * len(train_seeds))
    if any(r["scores"] and next(iter(r["scores"].values()))["auroc"] is not None for r in per_run):
        table += "\nAUROC of every detector on the same models (served score in bold):\n\n"
        table += detector_table(per_run)
    sweep = knn_sweep_summary(per_run)
    (out / "protocol.json").write_text(json.dumps({"config": base.to_dict(), "summary": summary,
                                                   "runs": results, "per_run": per_run,
                                                   "knn_sweep": sweep}, indent=2))
    if sweep:
        plot_knn_sweep(sweep, out / "protocol_knn_bank.png")
    (out / "protocol.md").write_text(table)
    plot(summary, out / "protocol.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
