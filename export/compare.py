"""`python -m export.compare A.onnx B.onnx [--out report.json]`: what serving A costs against B.

File size and onnxruntime images/s at batch 1 and batch 64 for both models, measured in one
process with interleaved rounds (median of rounds), and the A/B ratios. Used to state the
cost of a served score (e.g. the k-NN feature bank) against the same run exported without it.
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from cli_errors import OneLineErrorParser
from handlers.contract import ModelFileError, load_model


def throughput(paths: dict[str, Path], images: np.ndarray, threads: int = 2, rounds: int = 5,
               seconds: float = 1.0) -> dict[str, float]:
    """Images/s per model at images' batch size, interleaved rounds, median of rounds."""
    sessions = {name: load_model(path, ["CPUExecutionProvider"], threads)[0]
                for name, path in paths.items()}
    for session in sessions.values():
        for _ in range(3):
            session.run(["logits"], {"images": images})
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                session.run(["logits", "unknown_score"], {"images": images})
                count += len(images)
            samples[name].append(count / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def compare(a: Path, b: Path, threads: int = 2, rounds: int = 5, seconds: float = 1.0) -> dict:
    _, info = load_model(a, ["CPUExecutionProvider"])
    _, info_b = load_model(b, ["CPUExecutionProvider"])
    if (info.channels, info.height, info.width) != (info_b.channels, info_b.height, info_b.width):
        raise ModelFileError(f"{a} and {b} take different input shapes")
    images = np.random.default_rng(0).random((64, info.channels, info.height, info.width),
                                             dtype=np.float32)
    report = {"a": {"onnx": str(a), "bytes": a.stat().st_size, "score": info.score},
              "b": {"onnx": str(b), "bytes": b.stat().st_size, "score": info_b.score},
              "threads": threads, "rounds": rounds, "machine": platform.platform()}
    for batch in (1, 64):
        speed = throughput({"a": a, "b": b}, images[:batch], threads, rounds, seconds)
        report["a"][f"images_per_s_batch{batch}"] = speed["a"]
        report["b"][f"images_per_s_batch{batch}"] = speed["b"]
        report[f"speed_ratio_batch{batch}"] = speed["a"] / speed["b"]
    report["size_ratio"] = report["a"]["bytes"] / report["b"]["bytes"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m export.compare", description=__doc__)
    parser.add_argument("a", help="the model whose cost is stated")
    parser.add_argument("b", help="the reference model")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of 1 s each")
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args(argv)
    try:
        if args.threads < 1 or args.rounds < 1:
            raise ModelFileError("--threads and --rounds must be >= 1")
        report = compare(Path(args.a), Path(args.b), args.threads, args.rounds)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    except (ModelFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
