"""`python -m train.rkd_study`: RKD into a smaller student, against the same student from scratch.

Per seed s (weights and split seed both s): a teacher at --teacher-width, a student at --width
trained from scratch, and the same student distilled from the teacher with RKD (`--teacher`),
all with the same method, data and epochs. Every model is exported to ONNX and timed side by
side with onnxruntime at one batch size. Every `python -m train` flag applies (except --width,
--seed, --split-seed, --teacher, --out's layout). Writes rkd.json, rkd.md and rkd.png.
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

ROLES = ("teacher", "scratch", "rkd")


def role_config(base: TrainConfig, role: str, seed: int, teacher_width: float,
                out: Path) -> TrainConfig:
    """The TrainConfig of one role at one seed."""
    width = teacher_width if role == "teacher" else base.width
    teacher = str(out / f"seed{seed}" / "teacher") if role == "rkd" else None
    return dataclasses.replace(base, width=width, seed=seed, split_seed=seed, teacher=teacher,
                               out=str(out / f"seed{seed}" / role))


def time_onnx(out: Path, batch: int, threads: int, seconds: float) -> dict[str, float]:
    """Images/s of the seed-0 teacher and RKD student ONNX files, interleaved, same batch."""
    from export.onnx_export import export_onnx
    from export.compare import throughput

    paths = {}
    for role in ("teacher", "rkd"):
        paths[role] = out / f"{role}.onnx"
        export_onnx(out / "seed0" / role, paths[role])
    images = np.random.default_rng(0).random((batch, *json.loads(
        (out / "seed0" / "teacher" / "metrics.json").read_text())["input_shape"]), dtype=np.float32)
    return throughput(paths, images, threads=threads, seconds=seconds)


def markdown(table: dict, speed: dict, batch: int) -> str:
    lines = ["| model | width | multiply-adds | closed-set acc (mean +- std) | per seed |",
             "|---|---|---|---|---|"]
    for role, row in table.items():
        lines.append(f"| {role} | {row['width']} | {row['macs']:,} | {row['mean']:.4f} +- "
                     f"{row['std']:.4f} | {', '.join(f'{v:.4f}' for v in row['values'])} |")
    lines.append(f"\nONNX Runtime, batch {batch}: teacher {speed['teacher']:,.0f} img/s, RKD student "
                 f"{speed['rkd']:,.0f} img/s ({speed['rkd'] / speed['teacher']:.2f}x)")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, (role, row) in enumerate(table.items()):
        ax.bar(i, row["mean"], yerr=row["std"], capsize=4)
        ax.scatter([i] * len(row["values"]), row["values"], c="k", s=8)
    ax.set_xticks(range(len(table)), [f"{r}\n{table[r]['macs'] / 1e6:.1f}M MACs" for r in table])
    low = min(min(row["values"]) for row in table.values())
    ax.set_ylim(low - 0.01, 1.0)
    ax.set_ylabel("closed-set accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m train.rkd_study", __doc__)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--teacher-width", type=float, default=1.0)
    parser.add_argument("--bench-batch", type=int, default=64)
    parser.add_argument("--bench-threads", type=int, default=2)
    parser.add_argument("--bench-seconds", type=float, default=1.0, help="per timing round (5 rounds)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse run directories holding a finished run of the same config")
    parser.set_defaults(out="runs/rkd", width=0.5)
    try:
        base, extra = parse_config(argv, parser)
        if extra["seeds"] < 1 or extra["bench_batch"] < 1 or extra["bench_threads"] < 1:
            raise UserError("--seeds, --bench-batch and --bench-threads must be >= 1")
        if not extra["bench_seconds"] > 0:
            raise UserError(f"--bench-seconds must be > 0, got {extra['bench_seconds']}")
        if not extra["teacher_width"] > 0:
            raise UserError(f"--teacher-width must be > 0, got {extra['teacher_width']}")
        from train.run import finished_run, run

        out = Path(base.out)
        results: dict[str, list[dict]] = {role: [] for role in ROLES}
        for seed in range(extra["seeds"]):
            for role in ROLES:
                cfg = role_config(base, role, seed, extra["teacher_width"], out)
                metrics = (extra["resume"] and finished_run(cfg)) or run(cfg)
                results[role].append(metrics)
                print(f"seed {seed} {role}: acc {metrics['closed_acc']:.4f} "
                      f"({metrics['train_seconds']:.0f} s)", flush=True)
        speed = time_onnx(out, extra["bench_batch"], extra["bench_threads"], extra["bench_seconds"])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = {}
    for role, runs in results.items():
        values = np.array([m["closed_acc"] for m in runs])
        table[role] = {"width": extra["teacher_width"] if role == "teacher" else base.width,
                       "macs": runs[0]["macs"], "mean": float(values.mean()),
                       "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                       "values": values.tolist(),
                       "auroc": [m["auroc"] for m in runs],
                       "train_seconds": [m["train_seconds"] for m in runs]}
    summary = {
        "macs_ratio": table["rkd"]["macs"] / table["teacher"]["macs"],
        "retention": table["rkd"]["mean"] / table["teacher"]["mean"],
        "rkd_minus_scratch": table["rkd"]["mean"] - table["scratch"]["mean"],
        "onnx_images_per_s": speed, "onnx_speedup": speed["rkd"] / speed["teacher"],
        "bench_batch": extra["bench_batch"], "bench_threads": extra["bench_threads"],
    }
    text = markdown(table, speed, extra["bench_batch"])
    text += (f"\nstudent/teacher multiply-adds {summary['macs_ratio']:.3f}, accuracy retained "
             f"{summary['retention']:.2%}, RKD - scratch {summary['rkd_minus_scratch'] * 100:+.2f} pt\n")
    (out / "rkd.json").write_text(json.dumps({"config": base.to_dict(), "table": table,
                                              "summary": summary}, indent=2))
    (out / "rkd.md").write_text(text)
    plot(table, out / "rkd.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
