"""`python -m handlers.batch_score INPUT --model model.onnx --out scores.csv|.jsonl`.

Offline scoring with the serving predictor (no server), or `--server URL` to score through a
running TorchServe with multi-image requests. INPUT is an image folder (recursive), an .npz
with `x` (N x H x W, N x H x W x C or N x C x H x W; uint8 or floats in [0, 1]), or a text
file listing one image path per line. One output row per image; an unreadable image gets a
row with `error` set and is counted, never stopping the run. `reciprocal_score` is filled for
reciprocal-point models and empty (JSONL: null) for models without it. Memory stays bounded by
the batch size for folders and lists (an .npz array is loaded whole, as numpy does).
"""
from __future__ import annotations

import argparse
import itertools
import base64
import csv
import http.client
import json
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from handlers.decode import LUMA, MAX_IMAGES_PER_REQUEST, InputError, Shape, decode_image_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
COLUMNS = ("id", "label", "known", "unknown_score", "reciprocal_score", "predicted_class",
           "class_index", "top_k", "error")


class BatchScoreError(Exception):
    """Bad input to the whole run (not one image): one-line error, exit 2."""


@dataclass
class Batch:
    ids: list[str]
    payloads: list[bytes | np.ndarray]  # encoded bytes (files) or C x H x W pixels (npz)
    pixels: np.ndarray | None = None  # N' x C x H x W for the decodable ones
    good: list[int] = field(default_factory=list)  # positions of payloads in `pixels`
    errors: dict[int, str] = field(default_factory=dict)


def npz_pixels(x: np.ndarray, shape: Shape) -> np.ndarray:
    """A slice of an .npz `x` -> N x C x H x W float32 [0, 1] at the model's channels."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    pixels = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
    if pixels.shape[1] == 3 and shape.channels == 1:
        pixels = np.tensordot(pixels, LUMA, axes=([1], [0]))[:, None]
    elif pixels.shape[1] == 1 and shape.channels == 3:
        pixels = np.repeat(pixels, 3, axis=1)
    return np.ascontiguousarray(pixels)


def open_npz(path: Path, shape: Shape) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise BatchScoreError(f"{path}: cannot read as .npz ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise BatchScoreError(f"{path}: a single .npy array, not an .npz with x")
    with data:
        if "x" not in data.files:
            raise BatchScoreError(f"{path}: no array 'x' (found {sorted(data.files)})")
        try:
            x = data["x"]
        except (OSError, ValueError) as exc:
            raise BatchScoreError(f"{path}: cannot read x ({exc})") from None
    if x.ndim not in (3, 4) or not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise BatchScoreError(f"{path}: x must be uint8 or float images of rank 3 or 4, "
                              f"got {x.dtype} {x.shape}")
    sample = npz_pixels(x[:1], shape) if len(x) else None
    if sample is None or sample.shape[1:] != (shape.channels, shape.height, shape.width):
        raise BatchScoreError(f"{path}: x has shape {x.shape}; the model takes "
                              f"{shape.channels} x {shape.height} x {shape.width}")
    if x.dtype != np.uint8 and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise BatchScoreError(f"{path}: float x must be finite and in [0, 1]")
    return x


def list_images(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    lines = source.read_text().splitlines()
    return [Path(line.strip()) for line in lines if line.strip() and not line.startswith("#")]


def batches(source: Path, shape: Shape, batch_size: int) -> tuple[int, Iterator[Batch]]:
    """(image count, batches) for a folder, a list file or an .npz."""
    if source.suffix == ".npz":
        x = open_npz(source, shape)

        def from_npz() -> Iterator[Batch]:
            for start in range(0, len(x), batch_size):
                pixels = npz_pixels(x[start:start + batch_size], shape)
                yield Batch([str(i) for i in range(start, start + len(pixels))], list(pixels),
                            pixels, list(range(len(pixels))))
        return len(x), from_npz()
    if not source.exists():
        raise BatchScoreError(f"{source}: no such folder, list file or .npz")
    try:
        paths = list_images(source)
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchScoreError(f"{source}: cannot read ({exc})") from None

    def from_files() -> Iterator[Batch]:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            batch = Batch([str(p) for p in chunk], [])
            decoded = []
            for i, path in enumerate(chunk):
                try:
                    data = path.read_bytes()
                    batch.payloads.append(data)
                    decoded.append(decode_image_bytes(data, shape))
                    batch.good.append(i)
                except (OSError, InputError) as exc:
                    batch.payloads.append(b"")
                    batch.errors[i] = str(exc) if isinstance(exc, InputError) else \
                        f"cannot read file ({exc.strerror or exc})"
            batch.pixels = np.stack(decoded) if decoded else None
            yield batch
    return len(paths), from_files()


class RowWriter:
    """CSV or JSONL by the output file's suffix; one row per image, every column present."""

    def __init__(self, path: Path):
        if path.suffix not in (".csv", ".jsonl"):
            raise BatchScoreError(f"--out {path}: use a .csv or .jsonl file name")
        self.jsonl = path.suffix == ".jsonl"
        self.file = open(path, "w", newline="")
        self.csv = None if self.jsonl else csv.writer(self.file)
        if self.csv:
            self.csv.writerow(COLUMNS)

    def write(self, image_id: str, result: tuple | None, error: str | None) -> None:
        """result: (label, known, unknown_score, reciprocal_score or None, predicted_class,
        class_index, [(label, p)])."""
        if self.jsonl:
            values = result or (None,) * 7
            self.file.write(json.dumps(dict(zip(COLUMNS, (image_id, *values, error or "")))) + "\n")
        elif result:
            top = ";".join(f"{label}:{p:.6f}" for label, p in result[6])
            self.csv.writerow((image_id, *result[:6], top, error or ""))  # None -> empty cell
        else:
            self.csv.writerow((image_id, *[""] * 7, error or ""))

    def close(self) -> None:
        self.file.close()


def local_results(predictor, pixels: np.ndarray) -> list[tuple]:
    """Row tuples for a batch, vectorised where it counts (the offline hot path)."""
    logits, scores, reciprocal = predictor.run(pixels)
    top, top_p = predictor.top_classes(logits)
    known = scores <= predictor.info.threshold
    names = predictor.info.class_names
    reciprocal = [None] * len(scores) if reciprocal is None else reciprocal.tolist()
    return [(names[t[0]] if k else "unknown", bool(k), s, r, names[t[0]], t[0],
             [(names[i], p) for i, p in zip(t, tp)])
            for k, s, r, t, tp in zip(known, scores.tolist(), reciprocal, top.tolist(),
                                      top_p.tolist())]


def from_answer(answer: dict | str) -> tuple | str:
    """A server answer (or error text) as a row tuple."""
    if isinstance(answer, str):
        return answer
    return (answer["label"], answer["known"], answer["unknown_score"],
            answer.get("reciprocal_score"), answer["predicted_class"], answer["class_index"],
            [(p["label"], p["probability"]) for p in answer["probabilities"]])


class RemoteScorer:
    """Scores a batch through TorchServe: one multi-image JSON request, retries on 503."""

    def __init__(self, url: str, model: str, token: str | None, retries: int = 3):
        self.endpoint, self.token, self.retries = f"{url.rstrip('/')}/predictions/{model}", token, retries

    def __call__(self, batch: Batch) -> list[dict | str]:
        # pixels go as 0..255 integers: 3-4 characters each instead of ~20 for floats
        body = json.dumps([{"image": base64.b64encode(p).decode()} if isinstance(p, bytes)
                           else {"pixels": np.rint(p * 255).astype(np.uint8).tolist()} for p in
                           (batch.payloads[i] for i in batch.good)]).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        error = "no attempt"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.endpoint, data=body, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                error = f"server answered {exc.code}: {exc.read()[:200].decode(errors='replace')}"
                if exc.code != 503:
                    break
            except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
                error = f"server unreachable ({exc})"
            if attempt < self.retries:
                time.sleep(min(2.0, 0.1 * 2 ** attempt))
        return [error] * len(batch.good)


def score(source: Path, out: Path, predictor=None, shape: Shape | None = None, remote=None,
          batch_size: int = 64, concurrency: int = 1, progress: bool = True) -> dict:
    """Score every image of `source` into `out`; returns the run's summary. At most
    2 x concurrency batches are in flight, so memory stays bounded."""
    shape = shape or predictor.shape
    total, stream = batches(source, shape, batch_size)
    writer = RowWriter(out)

    def run(batch: Batch) -> tuple[Batch, list]:
        if batch.pixels is None or not batch.good:
            return batch, []
        if remote:
            return batch, [from_answer(a) for a in remote(batch)]
        return batch, local_results(predictor, batch.pixels)

    counts = {"images": 0, "errors": 0, "unknown": 0}
    started = time.perf_counter()
    bar = tqdm(total=total, unit="img", disable=not progress, desc="score")
    in_flight: deque = deque()
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        for item in itertools.chain(stream, [None]):  # None: drain what is in flight
            if item is not None:
                in_flight.append(pool.submit(run, item))
            while in_flight and (item is None or len(in_flight) >= 2 * concurrency):
                batch, results = in_flight.popleft().result()
                by_position = dict(zip(batch.good, results))
                for i, image_id in enumerate(batch.ids):
                    result = by_position.get(i)
                    error = batch.errors.get(i) or (result if isinstance(result, str) else None)
                    result = result if isinstance(result, tuple) else None
                    writer.write(image_id, result, error)
                    counts["errors"] += error is not None
                    counts["unknown"] += bool(result and not result[1])
                counts["images"] += len(batch.ids)
                bar.update(len(batch.ids))
    bar.close()
    writer.close()
    seconds = time.perf_counter() - started
    scored = counts["images"] - counts["errors"]
    return {**counts, "scored": scored, "seconds": seconds,
            "unknown_rate": counts["unknown"] / scored if scored else 0.0,
            "images_per_s": counts["images"] / seconds if seconds else 0.0, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handlers.batch_score", description=__doc__)
    parser.add_argument("input", help="image folder, .npz or list file")
    parser.add_argument("--out", required=True, help="scores.csv or scores.jsonl")
    parser.add_argument("--model", help="contract .onnx (local mode; also read for the input shape)")
    parser.add_argument("--server", help="score through TorchServe at this URL instead")
    parser.add_argument("--model-name", default="opensetmnist", help="TorchServe model name")
    parser.add_argument("--key-file", default="key_file.json", help="TorchServe's token file")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="batches in flight at once (default: 1 locally - onnxruntime already "
                             "uses the cores -, 4 with --server)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    parser.add_argument("--quiet", action="store_true")
    parser.error = lambda message: parser.exit(2, f"error: {message}\n")  # one line, exit 2
    args = parser.parse_args(argv)
    from handlers.contract import ModelFileError
    from handlers.predictor import Predictor

    try:
        concurrency = args.concurrency if args.concurrency is not None else (4 if args.server else 1)
        if args.batch_size < 1 or concurrency < 1:
            raise BatchScoreError("--batch-size and --concurrency must be >= 1")
        if args.server and args.batch_size > MAX_IMAGES_PER_REQUEST:
            raise BatchScoreError(f"--batch-size: the server takes at most "
                                  f"{MAX_IMAGES_PER_REQUEST} images per request")
        if args.server and not args.server.startswith(("http://", "https://")):
            raise BatchScoreError(f"--server {args.server!r}: expected http://host:port")
        if not args.model:
            raise BatchScoreError("--model is required (the .onnx gives the input shape)")
        predictor = Predictor(args.model, threads=args.threads)
        remote = None
        if args.server:
            token = None
            if Path(args.key_file).is_file():
                try:
                    token = json.loads(Path(args.key_file).read_text())["inference"]["key"]
                except (ValueError, KeyError, TypeError):
                    raise BatchScoreError(f"--key-file {args.key_file}: not TorchServe's "
                                          "key_file.json") from None
            remote = RemoteScorer(args.server, args.model_name, token)
        summary = score(Path(args.input), Path(args.out), predictor, remote=remote,
                        batch_size=args.batch_size, concurrency=concurrency,
                        progress=not args.quiet)
    except (BatchScoreError, ModelFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
