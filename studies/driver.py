"""The one study driver: a grid of training cells -> runs (resumable) -> summary -> outputs.

A study is a `Study`: its extra flags, the cells it trains (one TrainConfig each, derived from
the command line's config with `cfg.override`) and a `Report` built from the runs' metrics.
The driver parses every `python -m train` flag plus the study's, checks every cell before the
first run, trains each cell or (--resume) reuses a finished run of exactly its config, and
writes <out>/<name>.md, <name>.json and <name>.png. Bad input: one line, exit 2.

The summary rule of every study is `summarise`: mean and std over the runs of a cell that
define the figure, and how many do.
"""
from __future__ import annotations

import json
import sys
from argparse import ArgumentParser
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from collections.abc import Callable

import numpy as np

from cli_errors import UserError
from train.cli import build_parser, parse_config
from train.config import TrainConfig
from train.distributed import context, shutdown

MISSING = "n/a"  # a figure no run of a cell defines (closed-set AUROC, a detector a head lacks)


@dataclass(frozen=True)
class Cell:
    """One training run of a study: what the study groups it by, and its config."""
    labels: dict
    cfg: TrainConfig


@dataclass
class Report:
    """What a study writes: the Markdown table, the JSON figures, the bar plot's panels
    (panel title -> bar name -> summary) and any further plots (file name -> draw(path))."""
    table: str
    data: dict
    panels: dict[str, dict[str, dict]]
    extra_plots: dict[str, Callable[[Path], None]] = field(default_factory=dict)


Results = list[tuple[Cell, dict]]  # every cell with its run's metrics, in grid order


@dataclass(frozen=True)
class Study:
    """A study on the driver: `python -m studies.<name>` writes <out>/<name>.{md,json,png}."""
    name: str
    doc: str
    add_arguments: Callable[[ArgumentParser], None]
    defaults: dict  # the study's own defaults of train flags (--out, --method, ...)
    cells: Callable[[TrainConfig, dict], list[Cell]]
    report: Callable[[TrainConfig, dict, Results], Report]


def summarise(values: list[float | None]) -> dict:
    """One figure over the runs of a cell, the same rule in every study and table: mean and
    sample std (ddof 1; 0.0 for a single value) over the n runs that define it, and every
    run's value as it came (None: undefined for that run, e.g. AUROC without unknowns).
    mean and std are None when no run defines the figure."""
    defined = np.array([v for v in values if v is not None], dtype=float)
    n = len(defined)
    std = (float(defined.std(ddof=1)) if n > 1 else 0.0) if n else None
    return {"mean": float(defined.mean()) if n else None, "std": std, "n": n,
            "values": list(values)}


def summarise_runs(runs: list[dict], figures: tuple[str, ...]) -> dict[str, dict]:
    """figure -> summarise() over the runs' values of it."""
    return {key: summarise([run[key] for run in runs]) for key in figures}


def grouped(items: list, key: Callable) -> dict:
    """key(item) -> the items with that key, in first-seen order."""
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def fmt(value: float | None, digits: int = 4) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def stats_text(stats: dict, digits: int = 4, spread: bool = True) -> str:
    """A table cell of a summary: '0.9902 +- 0.0064' (or '0.990' without the spread); n/a when
    no run defines the figure, '(n=2/3)' after it when only some runs do."""
    if stats["mean"] is None:
        return MISSING
    text = fmt(stats["mean"], digits) + (f" +- {fmt(stats['std'], digits)}" if spread else "")
    if stats["n"] < len(stats["values"]):
        text += f" (n={stats['n']}/{len(stats['values'])})"
    return text


def parse_list(text: str, kind: type, flag: str) -> list:
    """'0,1' -> [0, 1], duplicates dropped; anything else is a one-line error naming the flag."""
    try:
        values = [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UserError(f"{flag} must be a comma-separated list of {kind.__name__} values, "
                        f"got {text!r}") from None
    if not values:
        raise UserError(f"{flag} is empty")
    return list(dict.fromkeys(values))


def run_cells(cells: list[Cell], resume: bool) -> Results:
    """Every cell's metrics: trained, or with `resume` taken from a finished run of exactly its
    config in its directory (an interrupted study continues where it stopped)."""
    from train.run import finished_run, run  # the data and model libraries load after parsing

    for cell in cells:  # a bad setting in any cell stops the study before the first run
        cell.cfg.validate()
    results = []
    for cell in cells:
        ctx = context(cell.cfg.device)  # under torchrun rank 0 decides, so all ranks agree
        metrics = ctx.on_main(partial(finished_run, cell.cfg)) if resume else None
        if metrics is None:
            metrics = run(cell.cfg)
        results.append((cell, metrics))
        if ctx.is_main:
            print(progress_line(cell, metrics), flush=True)
    return results


def progress_line(cell: Cell, metrics: dict) -> str:
    where = " ".join(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in cell.labels.items())
    return (f"{where}: acc {fmt(metrics['closed_acc'])}, balanced acc "
            f"{fmt(metrics.get('balanced_acc'))}, auroc {fmt(metrics['auroc'])} "
            f"({metrics['train_seconds']:.0f} s)")


def plot_bars(panels: dict[str, dict[str, dict]], path: Path) -> None:
    """One panel per title: a bar per name at its mean, a std error bar and a dot per run.
    Names whose figure no run defines are left out, and so are panels left empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {title: {name: stats for name, stats in bars.items() if stats["mean"] is not None}
              for title, bars in panels.items()}
    panels = {title: bars for title, bars in panels.items() if bars} or {"(no figures)": {}}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (title, bars) in zip(axes[0], panels.items()):
        names = list(bars)
        dots = [[v for v in bars[name]["values"] if v is not None] for name in names]
        ax.bar(range(len(names)), [bars[name]["mean"] for name in names],
               yerr=[bars[name]["std"] for name in names], capsize=4)
        for i, values in enumerate(dots):
            ax.scatter([i] * len(values), values, c="k", s=8, zorder=3)
        ax.set_ylim(max(0.0, min((min(v) for v in dots), default=1.0) - 0.05), 1.0)
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, name: str, config: TrainConfig, report: Report) -> None:
    """<out>/<name>.json (the command line's config + the figures), .md, .png; the table to stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"config": config.flat(), **report.data},
                                                 indent=2) + "\n")
    (out / f"{name}.md").write_text(report.table)
    plot_bars(report.panels, out / f"{name}.png")
    for file_name, draw in report.extra_plots.items():
        draw(out / file_name)
    print(report.table)


def study_parser(study: Study) -> ArgumentParser:
    """Every `python -m train` flag, the study's own and --resume."""
    parser = build_parser(f"python -m studies.{study.name}", study.doc)
    study.add_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="reuse run directories that already hold a finished run of the same "
                             "configuration (an interrupted study continues where it stopped)")
    parser.set_defaults(**study.defaults)
    return parser


def main(study: Study, argv: list[str] | None = None) -> int:
    """Parse, train (or reuse) every cell, write the outputs; bad input -> one line, exit 2."""
    try:
        base, extra = parse_config(argv, study_parser(study))
        resume = extra.pop("resume")
        results = run_cells(study.cells(base, extra), resume)
        if context(base.device).is_main:  # under torchrun every rank trains; rank 0 reports
            write_report(Path(base.out), study.name, base, study.report(base, extra, results))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()  # torchrun: the ranks leave together, after rank 0's report
    return 0
