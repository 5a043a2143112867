"""`python -m studies.longtail`: long-tailed training study, every variant on the same data.

For each imbalance ratio rho (--rhos, default 100,10) and seed s (--seeds N: 0..N-1, used as
both --seed and --split-seed), the base --method is trained with each variant (--variants):
`ce` (plain CE), `cb-softmax` / `cb-sigmoid` / `cb-focal` (class-balanced loss at --cb-beta)
`m2m` (M2m; its generator run is the same seed's `ce` run when that comes earlier in the
study and the method is softmax, else it is trained first), `la` (logit-adjusted CE, tau 1),
`drs` (deferred class-balanced re-sampling) and `la-drs` (both). A variant may name its own
method, `arpl:la-drs` or `softmax:cb-softmax`, so baselines train in the same study. Every
`python -m train` flag applies to all runs; every run reports the whole detector suite.
Writes per-run directories, `longtail.json`, a Markdown table `longtail.md` and `longtail.png`.
"""
from __future__ import annotations

import sys
from argparse import ArgumentParser
from pathlib import Path

from cli_errors import UserError
from studies import driver
from studies.detectors import detector_run, detector_section
from train.config import TrainConfig, positive
from train.losses.class_balanced import CLASS_BALANCED

VARIANTS = ("ce", *CLASS_BALANCED, "m2m", "la", "drs", "la-drs")
FIGURES = ("balanced_acc", "many", "medium", "few", "closed_acc", "auroc", "train_seconds")


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (training and split)")
    parser.add_argument("--rhos", default="100,10", help="comma-separated imbalance ratios")
    parser.add_argument("--variants", default="ce,cb-softmax,cb-focal,m2m",
                        help=f"comma-separated VARIANT or METHOD:VARIANT, VARIANT from "
                             f"{', '.join(VARIANTS)}")


def variant_config(base: TrainConfig, variant: str, rho: float, seed: int, out: Path,
                   generator_run: str | None) -> TrainConfig:
    """The run of one (variant, rho, seed) cell; `variant` is VARIANT or METHOD:VARIANT."""
    method, _, name = variant.rpartition(":")
    long_tail = base.long_tail
    return base.override(
        method=method or base.method, imbalance=rho, seed=seed, split_seed=seed,
        out=str(out / f"rho{rho:g}" / f"seed{seed}" / variant.replace(":", "-")),
        loss=name if name in CLASS_BALANCED else "ce",
        logit_adjust=1.0 if name in ("la", "la-drs") else long_tail.logit_adjust,
        drs=name in ("drs", "la-drs") or long_tail.drs,
        m2m=name == "m2m", m2m_generator_run=generator_run if name == "m2m" else None)


def cells(base: TrainConfig, extra: dict) -> list[driver.Cell]:
    """rho x seed x variant; run directories OUT/rhoR/seedS/VARIANT (':' -> '-')."""
    rhos = driver.parse_list(extra["rhos"], float, "--rhos")
    variants = driver.parse_list(extra["variants"], str, "--variants")
    bad = [v for v in variants if v.rpartition(":")[2] not in VARIANTS]
    if bad:
        raise UserError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    positive({"seeds": extra["seeds"]})
    grid = []
    for rho in rhos:
        for seed in range(extra["seeds"]):
            ce_run = None  # the generator run M2m reuses: this (rho, seed)'s plain-CE softmax
            for variant in variants:
                cfg = variant_config(base, variant, rho, seed, Path(base.out),
                                     ce_run if base.method == "softmax" else None)
                ce_run = cfg.out if variant == "ce" else ce_run
                grid.append(driver.Cell({"rho": rho, "seed": seed, "variant": variant}, cfg))
    return grid


def figures_of(metrics: dict) -> dict:
    groups = metrics["shot_groups"]
    return {"balanced_acc": metrics["balanced_acc"], "closed_acc": metrics["closed_acc"],
            "auroc": metrics["auroc"], "train_seconds": metrics["train_seconds"],
            **{name: groups[name]["acc"] for name in ("many", "medium", "few")}}


def time_multiples(runs: list[dict], variant: str = "m2m") -> dict[str, dict]:
    """variant's train_seconds / the same seed's ce train_seconds, per rho (paired by seed)."""
    ce = {(r["rho"], r["seed"]): r["train_seconds"] for r in runs if r["variant"] == "ce"}
    multiples: dict[str, list[float]] = {}
    for r in runs:
        if r["variant"] == variant and (r["rho"], r["seed"]) in ce:
            multiples.setdefault(f"{r['rho']:g}", []).append(
                r["train_seconds"] / ce[(r["rho"], r["seed"])])
    return {rho: driver.summarise(values) for rho, values in multiples.items()}


def time_multiple(rho: str, variant: str, variants: dict, multiples: dict) -> str:
    """The 'x CE time' cell: m2m's paired multiple, else the ratio of mean times to ce's."""
    if variant == "m2m" and rho in multiples:
        return f"{multiples[rho]['mean']:.1f}x"
    ce_time = variants.get("ce", {}).get("train_seconds", {}).get("mean")
    if not ce_time:
        return driver.MISSING
    return f"{variants[variant]['train_seconds']['mean'] / ce_time:.1f}x"


def markdown(summary: dict, multiples: dict, n_seeds: int) -> str:
    lines = [f"| rho | variant | balanced acc (mean +- std, {n_seeds} seeds) | many | medium | few "
             "| AUROC | train s | x CE time |", "|---|---|---|---|---|---|---|---|---|"]
    for rho, variants in summary.items():
        for variant, stats in variants.items():
            short = [driver.stats_text(stats[key], 3, spread=False)
                     for key in ("many", "medium", "few", "auroc")]
            lines.append(f"| {rho} | {variant} | {driver.stats_text(stats['balanced_acc'])} | "
                         + " | ".join(short) + f" | {stats['train_seconds']['mean']:.0f} | "
                         f"{time_multiple(rho, variant, variants, multiples)} |")
    return "\n".join(lines) + "\n"


def report(base: TrainConfig, extra: dict, results: driver.Results) -> driver.Report:
    runs, per_run = [], []
    for cell, metrics in results:
        rho, seed, variant = cell.labels["rho"], cell.labels["seed"], cell.labels["variant"]
        runs.append({"rho": rho, "seed": seed, "variant": variant, **figures_of(metrics)})
        per_run.append(detector_run(f"rho {rho:g} {variant}", seed, seed, metrics, rho=rho))
    summary = {rho: {variant: driver.summarise_runs(cell_runs, FIGURES)
                     for variant, cell_runs in driver.grouped(rho_runs, lambda r: r["variant"]).items()}
               for rho, rho_runs in driver.grouped(runs, lambda r: f"{r['rho']:g}").items()}
    multiples = time_multiples(runs)
    groups = []  # each rho's cells against that rho's softmax baseline, its best detector
    for rho_runs in driver.grouped(per_run, lambda r: r["rho"]).values():
        baseline = next((r["method"] for r in rho_runs if "softmax:" in r["method"]), "")
        groups.append((rho_runs, baseline, None))
    return driver.Report(
        table=markdown(summary, multiples, extra["seeds"]) + detector_section(groups),
        data={"summary": summary, "m2m_time_multiple": multiples, "runs": runs, "per_run": per_run},
        panels={f"rho = {rho}: balanced accuracy": {v: stats["balanced_acc"]
                                                     for v, stats in variants.items()}
                for rho, variants in summary.items()})


STUDY = driver.Study("longtail", __doc__, add_arguments,
                     {"out": "runs/longtail", "method": "softmax", "num_known": 10}, cells, report)


def main(argv: list[str] | None = None) -> int:
    return driver.main(STUDY, argv)


if __name__ == "__main__":
    sys.exit(main())
