"""`python -m studies.rkd`: RKD into a smaller student, against the same student from scratch.

Per seed s (weights and split seed both s): a teacher at --teacher-width, a student at --width
trained from scratch, and the same student distilled from the teacher with RKD (`--teacher`),
all with the same method, data and epochs. The seed-0 teacher and RKD student are exported to
ONNX and timed side by side with onnxruntime at one batch size. Every `python -m train` flag
applies (except --width, --seed, --split-seed, --teacher, --out's layout). Writes rkd.json,
rkd.md and rkd.png.
"""
from __future__ import annotations

import sys
from argparse import ArgumentParser
from pathlib import Path

import numpy as np

from studies import driver
from train.config import TrainConfig, positive

ROLES = ("teacher", "scratch", "rkd")


def add_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--teacher-width", type=float, default=1.0)
    parser.add_argument("--bench-batch", type=int, default=64)
    parser.add_argument("--bench-threads", type=int, default=2)
    parser.add_argument("--bench-seconds", type=float, default=1.0, help="per timing round (5 rounds)")


def cells(base: TrainConfig, extra: dict) -> list[driver.Cell]:
    """seed x role; run directories OUT/seedS/ROLE, the RKD student taught by OUT/seedS/teacher."""
    positive({name.replace("_", "-"): extra[name] for name in
              ("seeds", "teacher_width", "bench_batch", "bench_threads", "bench_seconds")})
    grid = []
    for seed in range(extra["seeds"]):
        out = Path(base.out) / f"seed{seed}"
        for role in ROLES:
            grid.append(driver.Cell({"seed": seed, "role": role}, base.override(
                width=extra["teacher_width"] if role == "teacher" else base.width,
                teacher=str(out / "teacher") if role == "rkd" else None,
                seed=seed, split_seed=seed, out=str(out / role))))
    return grid


def time_onnx(out: Path, results: driver.Results, extra: dict) -> dict[str, float]:
    """Images/s of the first seed's teacher and RKD student as OUT/ROLE.onnx, interleaved
    rounds at one batch size."""
    from export.compare import throughput
    from export.onnx_export import export_onnx

    first = {cell.labels["role"]: (cell.cfg.out, metrics) for cell, metrics in results[:len(ROLES)]}
    paths = {role: out / f"{role}.onnx" for role in ("teacher", "rkd")}
    for role, path in paths.items():
        export_onnx(first[role][0], path)
    shape = first["teacher"][1]["input_shape"]  # C, H, W
    images = np.random.default_rng(0).random((extra["bench_batch"], *shape), dtype=np.float32)
    return throughput(paths, images, threads=extra["bench_threads"], seconds=extra["bench_seconds"])


def markdown(table: dict, speed: dict, batch: int, summary: dict) -> str:
    lines = ["| model | width | multiply-adds | closed-set acc (mean +- std) | per seed |",
             "|---|---|---|---|---|"]
    for role, row in table.items():
        lines.append(f"| {role} | {row['width']} | {row['macs']:,} | {driver.stats_text(row)} | "
                     f"{', '.join(driver.fmt(v) for v in row['values'])} |")
    lines.append(f"\nONNX Runtime, batch {batch}: teacher {speed['teacher']:,.0f} img/s, RKD student "
                 f"{speed['rkd']:,.0f} img/s ({summary['onnx_speedup']:.2f}x)")
    lines.append(f"\nstudent/teacher multiply-adds {summary['macs_ratio']:.3f}, accuracy retained "
                 f"{summary['retention']:.2%}, RKD - scratch {summary['rkd_minus_scratch'] * 100:+.2f} pt")
    return "\n".join(lines) + "\n"


def report(base: TrainConfig, extra: dict, results: driver.Results) -> driver.Report:
    table = {}
    for role, runs in driver.grouped(results, lambda item: item[0].labels["role"]).items():
        metrics = [m for _, m in runs]
        table[role] = {"width": runs[0][0].cfg.width, "macs": metrics[0]["macs"],
                       **driver.summarise([m["closed_acc"] for m in metrics]),
                       "auroc": [m["auroc"] for m in metrics],
                       "train_seconds": [m["train_seconds"] for m in metrics]}
    speed = time_onnx(Path(base.out), results, extra)
    summary = {"macs_ratio": table["rkd"]["macs"] / table["teacher"]["macs"],
               "retention": table["rkd"]["mean"] / table["teacher"]["mean"],
               "rkd_minus_scratch": table["rkd"]["mean"] - table["scratch"]["mean"],
               "onnx_images_per_s": speed, "onnx_speedup": speed["rkd"] / speed["teacher"],
               "bench_batch": extra["bench_batch"], "bench_threads": extra["bench_threads"]}
    return driver.Report(
        table=markdown(table, speed, extra["bench_batch"], summary),
        data={"table": table, "summary": summary},
        panels={"closed-set accuracy": {f"{role}\n{row['macs'] / 1e6:.1f}M MACs": row
                                        for role, row in table.items()}})


STUDY = driver.Study("rkd", __doc__, add_arguments, {"out": "runs/rkd", "width": 0.5}, cells, report)


def main(argv: list[str] | None = None) -> int:
    return driver.main(STUDY, argv)


if __name__ == "__main__":
    sys.exit(main())
