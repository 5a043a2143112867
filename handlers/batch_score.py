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
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from handlers.batch_sources import Batch, BatchScoreError, batches
from handlers.batch_writer import RowWriter
from handlers.decode import MAX_IMAGES_PER_REQUEST, Shape
from handlers.remote_client import MAX_REQUEST_SIZE, RemoteScorer
from handlers.server import KeyFileError, read_inference_key

if TYPE_CHECKING:  # onnxruntime is imported when a model is loaded, not for --help
    from handlers.predictor import Predictor


def answer_batch(predictor: Predictor | None, remote: RemoteScorer | None, batch: Batch) -> list[dict | str]:
    """Per decodable image of the batch (in `batch.good` order): its answer, or an error text.
    Both modes answer with the predictor's decision (locally here, remotely in the server)."""
    if batch.pixels is None or not batch.good:
        return []
    if remote:
        return remote([batch.payloads[i] for i in batch.good])
    return predictor.answers(predictor.run(batch.pixels))


def in_order(pool: Executor, work: Callable, items: Iterable, window: int) -> Iterator[tuple]:
    """(item, work(item)) for each item, in order, with at most `window` items in flight
    (pool.map would submit them all, and so hold every batch in memory)."""
    in_flight: deque = deque()
    for item in items:
        in_flight.append((item, pool.submit(work, item)))
        if len(in_flight) >= window:
            item, future = in_flight.popleft()
            yield item, future.result()
    while in_flight:
        item, future = in_flight.popleft()
        yield item, future.result()


def batch_rows(batch: Batch, answers: list[dict | str]) -> Iterator[tuple[str, dict | None, str | None]]:
    """(id, answer or None, error or None) per image of the batch, in input order."""
    by_position = dict(zip(batch.good, answers))
    for i, image_id in enumerate(batch.ids):
        answer = by_position.get(i)
        error = batch.errors.get(i) or (answer if isinstance(answer, str) else None)
        yield image_id, answer if isinstance(answer, dict) else None, error


def write_row(writer: RowWriter, image_id: str, answer: dict | None, error: str | None,
              counts: dict) -> None:
    """One row, and its image, error and unknown counted."""
    writer.write(image_id, answer, error)
    counts["images"] += 1
    counts["errors"] += error is not None
    counts["unknown"] += bool(answer and not answer["known"])


def write_batch(writer: RowWriter, batch: Batch, answers: list[dict | str], counts: dict) -> None:
    """The batch's rows, in input order."""
    for row in batch_rows(batch, answers):
        write_row(writer, *row, counts)


def summary(counts: dict, seconds: float, out: Path) -> dict:
    scored = counts["images"] - counts["errors"]
    return {**counts, "scored": scored, "seconds": seconds,
            "unknown_rate": counts["unknown"] / scored if scored else 0.0,
            "images_per_s": counts["images"] / seconds if seconds else 0.0, "out": str(out)}


def score(source: Path, out: Path, predictor: Predictor | None = None, shape: Shape | None = None,
          remote: RemoteScorer | None = None, batch_size: int = 64, concurrency: int = 1,
          progress: bool = True) -> dict:
    """Score every image of `source` into `out`; returns the run's summary. At most
    2 x concurrency batches are in flight, so memory stays bounded."""
    total, stream = batches(source, shape or predictor.shape, batch_size)
    counts = {"images": 0, "errors": 0, "unknown": 0}
    started = time.perf_counter()
    with (RowWriter(out) as writer, ThreadPoolExecutor(max(1, concurrency)) as pool,
          tqdm(total=total, unit="img", disable=not progress, desc="score") as bar):
        work = partial(answer_batch, predictor, remote)
        for batch, answers in in_order(pool, work, stream, 2 * concurrency):
            write_batch(writer, batch, answers, counts)
            bar.update(len(batch.ids))
    return summary(counts, time.perf_counter() - started, out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m handlers.batch_score", description=__doc__)
    parser.add_argument("input", help="image folder, .npz or list file")
    parser.add_argument("--out", required=True, help="scores.csv or scores.jsonl")
    parser.add_argument("--model", help="contract .onnx (local mode; also read for the input shape)")
    parser.add_argument("--server", help="score through TorchServe at this URL instead")
    parser.add_argument("--model-name", default="opensetmnist", help="TorchServe model name")
    parser.add_argument("--key-file", default="key_file.json", help="TorchServe's token file")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_REQUEST_SIZE,
                        help="with --server: the server's max_request_size (TorchServe's "
                             "config.properties; default %(default)s); larger batches go as "
                             "several requests")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=None,
                        help="batches in flight at once (default: 1 locally - onnxruntime already "
                             "uses the cores -, 4 with --server)")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime threads (with --ray: per actor, default 1)")
    parser.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                        help="score on Ray Data: a local Ray started and stopped here, or the "
                             "cluster at ADDRESS (host:port, ray://host:port or auto); needs the "
                             "`ray` extra")
    parser.add_argument("--quiet", action="store_true")
    parser.error = lambda message: parser.exit(2, f"error: {message}\n")  # one line, exit 2
    return parser


def checked_concurrency(args: argparse.Namespace) -> int:
    """The run's concurrency, after refusing flags that cannot work together."""
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
    if args.ray and args.server:
        raise BatchScoreError("--ray scores with the model file, --server through a server: "
                              "choose one")
    if args.threads is not None and args.threads < 1:
        raise BatchScoreError("--threads must be >= 1")
    if args.max_body_bytes < 1:
        raise BatchScoreError("--max-body-bytes must be >= 1")
    return concurrency


def remote_scorer(args: argparse.Namespace) -> RemoteScorer | None:
    """The --server client with the token of --key-file (none when that file is absent)."""
    if not args.server:
        return None
    try:
        token = read_inference_key(Path(args.key_file))
    except KeyFileError as exc:
        raise BatchScoreError(f"--key-file {exc}") from None
    return RemoteScorer(args.server, args.model_name, token, max_body_bytes=args.max_body_bytes)


def ray_score(args: argparse.Namespace, predictor: Predictor) -> dict:
    """--ray: the same rows from Ray Data (handlers/ray_score.py; the `ray` extra)."""
    try:
        from handlers.ray_score import score_on_ray
    except ImportError as exc:
        raise BatchScoreError(f"--ray needs Ray Data: pip install -e '.[ray]' ({exc})") from None
    return score_on_ray(Path(args.input), Path(args.out), Path(args.model), predictor.shape,
                        args.ray, args.batch_size, args.threads or 1, not args.quiet)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from handlers.contract import ModelFileError
    from handlers.predictor import Predictor

    try:
        concurrency = checked_concurrency(args)
        predictor = Predictor(args.model, threads=args.threads)
        if args.ray:
            result = ray_score(args, predictor)
        else:
            result = score(Path(args.input), Path(args.out), predictor,
                           remote=remote_scorer(args), batch_size=args.batch_size,
                           concurrency=concurrency, progress=not args.quiet)
    except (BatchScoreError, ModelFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
