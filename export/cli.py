"""`python -m export RUN_DIR --out model.onnx [--int8]`: bad input -> one line, exit 2."""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from cli_errors import OneLineErrorParser, UserError
from handlers.contract import ModelFileError


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m export", description=__doc__)
    parser.add_argument("run_dir", help="a training run directory (model.pt, metrics.json)")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--model-version", default="1", help="version stored in the metadata")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max |ONNX - PyTorch| allowed on every output")
    parser.add_argument("--int8", action="store_true",
                        help="also write OUT with .int8.onnx: static int8, checked against fp32")
    parser.add_argument("--max-auroc-drop", type=float, default=0.005)
    parser.add_argument("--max-acc-drop", type=float, default=0.005,
                        help="closed-set accuracy drop allowed, as a fraction (0.005 = 0.5 pt)")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--sla-aggregate", action="store_true",
                        help="SLA runs: export M-pass aggregated inference (SLA+AG) instead of "
                             "the single-pass distilled head")
    parser.add_argument("--head-score", action="store_true",
                        help="leave the post-hoc detector (and its feature bank) out: the head's "
                             "own score decides, with its own validation threshold")
    return parser


def int8_report(run_dir: Path, fp32: Path, int8: Path, args: argparse.Namespace) -> dict:
    from export.compare import throughput
    from export.quantize import evaluate, quantize_int8
    from rundir import RunDirectory

    split = RunDirectory(run_dir).split_images(train_images=args.calibration_images)
    quantize_int8(fp32, int8, split.pop("train"))  # calibration only: not kept while evaluating
    scores = {"fp32": evaluate(fp32, split), "int8": evaluate(int8, split)}
    speed = throughput({"fp32": fp32, "int8": int8}, split["test_known"][:64])
    return {
        **scores,
        "auroc_drop": scores["fp32"]["auroc"] - scores["int8"]["auroc"],
        "acc_drop": scores["fp32"]["closed_acc"] - scores["int8"]["closed_acc"],
        "images_per_s_batch64": speed, "int8_speedup": speed["int8"] / speed["fp32"],
        "threads": 2, "machine": platform.platform(), "int8_bytes": int8.stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from export.onnx_export import ExportError, export_onnx

    run_dir, out = Path(args.run_dir), Path(args.out)
    try:
        if args.calibration_images < 1:
            raise ExportError("--calibration-images must be >= 1")
        report = export_onnx(run_dir, out, args.model_version, tolerance=args.tolerance,
                             aggregated=args.sla_aggregate, head_score=args.head_score)
        if args.int8:
            int8 = out.with_suffix(".int8.onnx")
            report["int8"] = int8_report(run_dir, out, int8, args)
            q = report["int8"]
            if q["auroc_drop"] > args.max_auroc_drop or q["acc_drop"] > args.max_acc_drop:
                int8.unlink(missing_ok=True)
                raise ExportError(
                    f"int8 model refused: AUROC drop {q['auroc_drop']:.4f} (max "
                    f"{args.max_auroc_drop}), accuracy drop {q['acc_drop']:.4f} (max "
                    f"{args.max_acc_drop}); fp32 model kept at {out}")
            report["int8"]["onnx"] = str(int8)
    except (ExportError, ModelFileError, UserError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report_path = out.with_suffix(".export.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0
