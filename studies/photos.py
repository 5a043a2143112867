"""`python -m studies.photos --out runs/photos`: training on photo folders, measured.

Three parts, each a set of `python -m train` runs in subprocesses whose memory is sampled
(the proportional set size, PSS, summed over the run's process tree every 0.2 s: DataLoader
workers share the cache and the parent's pages, so plain RSS would count them several times):

  stream    the 800-JPEG folder (mixed sizes, 2 corrupt files): in memory (--workers 0) against
            streamed (--cache-mb 0 --workers 2), interleaved ABAB: images/s and peak PSS.
  cache     a folder whose decoded size is 4x --cache-mb: peak PSS against the same run with
            --cache-mb 0 (the process, model, activations and workers: everything but cached
            images) and against in memory (--cache-mb above the decoded size).
  transfer  an ImageNet-style ResNet-18 on a small digits-photo folder, from scratch against
            --pretrained from a run on another (MNIST-photo) folder with the same known
            classes (the unknown classes are never trained on by either), two seeds each.

Writes OUT/photos.json, OUT/photos.md and OUT/photos_memory.png.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from cli_errors import OneLineErrorParser
from studies.photo_folder import write_folder

MB = 2**20


def tree_pss(process: psutil.Process) -> int:
    """PSS bytes of a process and its children (0 for any that just went away)."""
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            pass
    return total


def train(args: list[str], out: Path, log: Path) -> dict:
    """One `python -m train` run: its metrics plus peak PSS and the PSS timeline."""
    command = [sys.executable, "-m", "train", *args, "--out", str(out)]
    started = time.perf_counter()
    with open(log, "w") as fh:
        child = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT)
        process, timeline = psutil.Process(child.pid), []
        while child.poll() is None:
            timeline.append((time.perf_counter() - started, tree_pss(process)))
            time.sleep(0.2)
    if child.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed; see {log}")
    metrics = json.loads((out / "metrics.json").read_text())
    images = metrics["n_train"] * metrics["epochs_run"]
    return {"args": args, "wall_seconds": time.perf_counter() - started,
            "train_images_per_s": images / metrics["train_seconds"],
            "peak_pss_mb": max(p for _, p in timeline) / MB if timeline else None,
            "timeline": [(round(t, 2), round(p / MB, 1)) for t, p in timeline],
            "closed_acc": metrics["closed_acc"], "auroc": metrics["auroc"],
            "input_shape": metrics["input_shape"], "n_train": metrics["n_train"],
            "unreadable_files": metrics["unreadable_files"], "streamed": metrics["streamed"]}


def folder(path: Path, **kwargs) -> Path:
    if not path.is_dir():
        write_folder(path, **kwargs)
    return path


def interleaved(modes: dict[str, list[str]], rounds: int, out: Path, part: str) -> dict[str, list[dict]]:
    """Each mode's training flags run once per round, the modes alternating (ABAB...): the
    machine's drift hits every mode alike. {mode: [one result per round]}."""
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for round_ in range(rounds):
        for mode, flags in modes.items():
            runs[mode].append(train(flags, out / f"{part}/{mode}{round_}",
                                    out / f"{part}_{mode}{round_}.log"))
    return runs


def stream_part(out: Path, rounds: int) -> dict:
    photos = folder(out / "data/photos", per_class=80, min_size=40, max_size=95, corrupt=2, seed=0)
    common = ["--dataset", f"folder:{photos}", "--epochs", "5", "--detector", "none"]
    runs = interleaved({"in_memory": [*common, "--workers", "0"],
                        "streamed_2_workers": [*common, "--workers", "2", "--cache-mb", "0"]},
                       rounds, out, "stream")
    speed = {mode: float(np.median([r["train_images_per_s"] for r in rs])) for mode, rs in runs.items()}
    return {"runs": runs, "median_images_per_s": speed,
            "streamed_over_in_memory": speed["streamed_2_workers"] / speed["in_memory"],
            "peak_pss_mb": {mode: max(r["peak_pss_mb"] for r in rs) for mode, rs in runs.items()}}


def cache_part(out: Path, size: int, per_class: int, rounds: int) -> dict:
    big = folder(out / f"data/big{size}", per_class=per_class, min_size=size - 24, max_size=size + 40,
                 corrupt=1, seed=2)
    n_files = sum(1 for _ in big.rglob("*.jpg"))
    decoded_mb = n_files * 3 * size * size / MB
    bound_mb = decoded_mb / 4
    common = ["--image-size", str(size), "--epochs", "1", "--width", "0.25", "--detector", "none",
              "--workers", "2", "--batch-size", "32"]  # a light model: the data's share shows
    modes = {"no_cache": "0", "bounded": f"{bound_mb:.2f}", "in_memory": "100000"}
    repeats = interleaved({name: ["--dataset", f"folder:{big}", *common, "--cache-mb", cache_mb]
                           for name, cache_mb in modes.items()}, rounds, out, "cache")
    runs = {name: dict(rs[0], peak_pss_mb=float(np.median([r["peak_pss_mb"] for r in rs])),
                       peaks_mb=[r["peak_pss_mb"] for r in rs]) for name, rs in repeats.items()}
    base = runs["no_cache"]["peak_pss_mb"]
    return {"files": n_files, "image_size": size, "decoded_mb": decoded_mb, "cache_mb": bound_mb,
            "runs": runs, "bounded_over_no_cache_mb": runs["bounded"]["peak_pss_mb"] - base,
            "in_memory_over_no_cache_mb": runs["in_memory"]["peak_pss_mb"] - base,
            "within_bound": runs["bounded"]["peak_pss_mb"] <= base + bound_mb}


def transfer_part(out: Path, seeds: list[int], epochs: int) -> dict:
    source = folder(out / "data/source_mnist", per_class=300, min_size=40, max_size=95, corrupt=0,
                    seed=5, source="mnist5k")
    target = folder(out / "data/target_digits", per_class=60, min_size=40, max_size=95, corrupt=0,
                    seed=6, source="digits")
    common = ["--arch", "imagenet_resnet18", "--image-size", "64", "--split-seed", "0"]
    pre = train(["--dataset", f"folder:{source}", *common, "--epochs", "15"], out / "transfer/source",
                out / "transfer_source.log")
    runs: dict[str, list[dict]] = {"scratch": [], "pretrained": []}
    for seed in seeds:
        base = ["--dataset", f"folder:{target}", *common, "--epochs", str(epochs), "--seed", str(seed)]
        runs["scratch"].append(train(base, out / f"transfer/scratch{seed}", out / f"scratch{seed}.log"))
        runs["pretrained"].append(train(
            base + ["--pretrained", str(out / "transfer/source/model.pt"), "--head-epochs", "2"],
            out / f"transfer/pretrained{seed}", out / f"pretrained{seed}.log"))
    mean = {mode: {key: float(np.mean([r[key] for r in rs])) for key in ("closed_acc", "auroc")}
            for mode, rs in runs.items()}
    return {"source_run": {k: pre[k] for k in ("closed_acc", "auroc", "n_train")},
            "runs": runs, "mean": mean, "seeds": seeds, "epochs": epochs}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cache = result["cache"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run in cache["runs"].items():
        t, pss = zip(*run["timeline"])
        ax.plot(t, pss, label=name.replace("_", " "))
    base = cache["runs"]["no_cache"]["peak_pss_mb"]
    ax.axhline(base + cache["cache_mb"], color="grey", linestyle="--",
               label=f"--cache-mb 0 peak + the bound ({cache['cache_mb']:.0f} MiB)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("PSS of the process tree (MiB)")
    ax.set_title(f"{cache['files']} JPEGs at {cache['image_size']} px: decoded "
                 f"{cache['decoded_mb']:.0f} MiB = 4 x the cache bound")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(result: dict) -> str:
    s, c, t = result["stream"], result["cache"], result["transfer"]
    lines = ["| part | figure |", "|---|---|"]
    lines.append(f"| stream: images/s in memory / streamed (2 workers) | "
                 f"{s['median_images_per_s']['in_memory']:.0f} / "
                 f"{s['median_images_per_s']['streamed_2_workers']:.0f} (ratio "
                 f"{s['streamed_over_in_memory']:.2f}) |")
    lines.append(f"| stream: peak PSS in memory / streamed | {s['peak_pss_mb']['in_memory']:.0f} / "
                 f"{s['peak_pss_mb']['streamed_2_workers']:.0f} MiB |")
    lines.append(f"| cache: {c['files']} files, decoded {c['decoded_mb']:.0f} MiB, --cache-mb "
                 f"{c['cache_mb']:.0f} | peak PSS over --cache-mb 0: bounded "
                 f"{c['bounded_over_no_cache_mb']:+.0f} MiB, in memory "
                 f"{c['in_memory_over_no_cache_mb']:+.0f} MiB |")
    for mode, values in t["mean"].items():
        lines.append(f"| transfer: {mode} (mean of seeds {t['seeds']}) | closed-set acc "
                     f"{values['closed_acc']:.3f}, AUROC {values['auroc']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m studies.photos", description=__doc__)
    parser.add_argument("--out", default="runs/photos")
    parser.add_argument("--parts", default="stream,cache,transfer")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the stream "
                        "and cache parts (their medians are reported)")
    parser.add_argument("--cache-size", type=int, default=320, help="image side of the cache part")
    parser.add_argument("--cache-per-class", type=int, default=200)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--transfer-epochs", type=int, default=20)
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if not set(parts) <= {"stream", "cache", "transfer"} or args.rounds < 1:
        parser.error("--parts takes stream, cache, transfer; --rounds >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "photos.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if "stream" in parts:
        result["stream"] = stream_part(out, args.rounds)
    if "cache" in parts:
        result["cache"] = cache_part(out, args.cache_size, args.cache_per_class, args.rounds)
    if "transfer" in parts:
        result["transfer"] = transfer_part(out, [int(s) for s in args.seeds.split(",")],
                                           args.transfer_epochs)
    result["machine"] = {"cpus": psutil.cpu_count(), "memory_gb": psutil.virtual_memory().total / 2**30}
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    if {"stream", "cache", "transfer"} <= set(result):
        (out / "photos.md").write_text(markdown(result))
        plot(result, out / "photos_memory.png")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "runs"} for k, v in result.items()
                      if isinstance(v, dict)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
