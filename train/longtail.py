"""`python -m train.longtail`: long-tailed training study, every variant on the same data.

For each imbalance ratio rho (--rhos, default 100,10) and seed s (--seeds N: 0..N-1, used as
both --seed and --split-seed), the base --method is trained with each variant (--variants):
`ce` (plain CE), `cb-softmax` / `cb-sigmoid` / `cb-focal` (class-balanced loss at --cb-beta)
`m2m` (M2m; its g is the same seed's `ce` run when that is in the study and the method
is softmax, else it is trained first), `la` (logit-adjusted CE, tau 1), `drs` (deferred
class-balanced re-sampling) and `la-drs` (both). A variant may name its own method,
`arpl:la-drs` or `softmax:cb-softmax`, so baselines train in the same study. Every
`python -m train` flag applies to all runs; every run reports the whole detector suite.
Writes per-run directories, `longtail.json`, a Markdown table `longtail.md` and `longtail.png`.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from train.cli import build_parser, parse_config
from train.config import TrainConfig
from cli_errors import UserError
from train.losses.class_balanced import CLASS_BALANCED
from train.protocol import detector_table

VARIANTS = ("ce", *CLASS_BALANCED, "m2m", "la", "drs", "la-drs")
FIGURES = ("balanced_acc", "many", "medium", "few", "closed_acc", "auroc", "train_seconds")


def variant_config(base: TrainConfig, variant: str, rho: float, seed: int, out: Path,
                   g_dir: str | None) -> TrainConfig:
    """The run of one (variant, rho, seed) cell; `variant` is VARIANT or METHOD:VARIANT."""
    method, _, name = variant.rpartition(":")
    return dataclasses.replace(
        base, method=method or base.method, imbalance=rho, seed=seed, split_seed=seed,
        out=str(out / f"rho{rho:g}" / f"seed{seed}" / variant.replace(":", "-")),
        loss=name if name in CLASS_BALANCED else "ce",
        logit_adjust=1.0 if name in ("la", "la-drs") else base.logit_adjust,
        drs=name in ("drs", "la-drs") or base.drs,
        m2m=name == "m2m", m2m_g=g_dir if name == "m2m" else None)


def figures_of(metrics: dict) -> dict:
    groups = metrics["shot_groups"]
    return {"balanced_acc": metrics["balanced_acc"], "closed_acc": metrics["closed_acc"],
            "auroc": metrics["auroc"], "train_seconds": metrics["train_seconds"],
            **{name: groups[name]["acc"] for name in ("many", "medium", "few")}}


def summarise(runs: list[dict]) -> dict[str, dict[str, dict]]:
    """rho -> variant -> figure -> mean/std/values (None where a figure is undefined)."""
    summary: dict[str, dict[str, dict]] = {}
    for run in runs:
        cell = summary.setdefault(f"{run['rho']:g}", {}).setdefault(run["variant"], {})
        for key in FIGURES:
            cell.setdefault(key, []).append(run[key])
    for variants in summary.values():
        for cell in variants.values():
            for key, values in cell.items():
                defined = np.array([v for v in values if v is not None], dtype=float)
                cell[key] = {"mean": float(defined.mean()) if len(defined) else None,
                             "std": float(defined.std(ddof=1)) if len(defined) > 1 else 0.0,
                             "values": values}
    return summary


def time_multiples(runs: list[dict], variant: str = "m2m") -> dict[str, dict]:
    """variant's train_seconds / the same seed's ce train_seconds, per rho (paired by seed)."""
    ce = {(r["rho"], r["seed"]): r["train_seconds"] for r in runs if r["variant"] == "ce"}
    multiples: dict[str, list[float]] = {}
    for r in runs:
        if r["variant"] == variant and (r["rho"], r["seed"]) in ce:
            multiples.setdefault(f"{r['rho']:g}", []).append(r["train_seconds"] / ce[(r["rho"], r["seed"])])
    return {rho: {"mean": float(np.mean(v)), "values": v} for rho, v in multiples.items()}


def markdown(summary: dict, multiples: dict, n_seeds: int) -> str:
    def cell(stats: dict, std: bool = False) -> str:
        if stats["mean"] is None:
            return "-"
        return f"{stats['mean']:.4f} +- {stats['std']:.4f}" if std else f"{stats['mean']:.3f}"

    lines = [f"| rho | variant | balanced acc (mean +- std, {n_seeds} seeds) | many | medium | few "
             "| AUROC | train s | x CE time |", "|---|---|---|---|---|---|---|---|---|"]
    for rho, variants in summary.items():
        ce_time = variants.get("ce", {}).get("train_seconds", {}).get("mean")
        for variant, stats in variants.items():
            seconds = stats["train_seconds"]["mean"]
            multiple = (f"{multiples[rho]['mean']:.1f}x" if variant == "m2m" and rho in multiples
                        else f"{seconds / ce_time:.1f}x" if ce_time else "-")
            lines.append(f"| {rho} | {variant} | {cell(stats['balanced_acc'], True)} | "
                         f"{cell(stats['many'])} | {cell(stats['medium'])} | {cell(stats['few'])} | "
                         f"{cell(stats['auroc'])} | {seconds:.0f} | {multiple} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(4.5 * len(summary), 3.5), squeeze=False)
    for ax, (rho, variants) in zip(axes[0], summary.items()):
        names = list(variants)
        means = [variants[n]["balanced_acc"]["mean"] for n in names]
        ax.bar(names, means, yerr=[variants[n]["balanced_acc"]["std"] for n in names], capsize=4)
        for i, n in enumerate(names):
            values = variants[n]["balanced_acc"]["values"]
            ax.scatter([i] * len(values), values, c="k", s=8, zorder=3)
        ax.set_ylim(max(0.0, min(means) - 0.1), 1.0)
        ax.set_title(f"rho = {rho}: balanced accuracy")
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_list(text: str, kind: type, flag: str) -> list:
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} must be a comma-separated list, got {text!r}") from None
    if not values:
        raise UserError(f"{flag} is empty")
    return list(dict.fromkeys(values))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m train.longtail", __doc__)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (training and split)")
    parser.add_argument("--rhos", default="100,10", help="comma-separated imbalance ratios")
    parser.add_argument("--variants", default="ce,cb-softmax,cb-focal,m2m",
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--resume", action="store_true",
                        help="reuse run directories that already hold a finished run of the same "
                             "configuration")
    parser.set_defaults(out="runs/longtail", method="softmax", num_known=10)
    try:
        base, extra = parse_config(argv, parser)
        rhos = parse_list(extra["rhos"], float, "--rhos")
        variants = parse_list(extra["variants"], str, "--variants")
        bad = [v for v in variants if v.rpartition(":")[2] not in VARIANTS]
        if bad:
            raise UserError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
        if extra["seeds"] < 1:
            raise UserError(f"--seeds must be >= 1, got {extra['seeds']}")
        from train.run import finished_run, run, validate

        out = Path(base.out)
        for variant in variants:  # every cell's settings are checked before the first run
            validate(variant_config(base, variant, max(rhos), 0, out, None))
        runs: list[dict] = []
        per_run: list[dict] = []
        for rho in rhos:
            for seed in range(extra["seeds"]):
                ce_dir = None
                for variant in variants:
                    g_dir = ce_dir if base.method == "softmax" else None
                    cfg = variant_config(base, variant, rho, seed, out, g_dir)
                    metrics = (extra["resume"] and finished_run(cfg)) or run(cfg)
                    if variant == "ce":
                        ce_dir = cfg.out
                    runs.append({"rho": rho, "seed": seed, "variant": variant, **figures_of(metrics)})
                    per_run.append({"method": f"rho {rho:g} {variant}", "rho": rho, "split_seed": seed,
                                    "seed": seed, "score": metrics["score"],
                                    "scores": metrics["scores"]})
                    print(f"rho {rho:g} seed {seed} {variant}: balanced acc "
                          f"{metrics['balanced_acc']:.4f} few {runs[-1]['few']} "
                          f"({metrics['train_seconds']:.0f} s)", flush=True)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = summarise(runs)
    multiples = time_multiples(runs)
    table = markdown(summary, multiples, extra["seeds"])
    if any(r["scores"] and next(iter(r["scores"].values()))["auroc"] is not None for r in per_run):
        table += "\nAUROC of every detector on the same models (served score in bold):\n"
        for rho in rhos:  # each rho's cells against that rho's softmax baseline
            cells = [r for r in per_run if r["rho"] == rho]
            baseline = next((r["method"] for r in cells if "softmax:" in r["method"]), "")
            table += "\n" + detector_table(cells, baseline, None)
    (out / "longtail.json").write_text(json.dumps({"config": base.to_dict(), "summary": summary,
                                                   "m2m_time_multiple": multiples, "runs": runs,
                                                   "per_run": per_run}, indent=2))
    (out / "longtail.md").write_text(table)
    plot(summary, out / "longtail.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
