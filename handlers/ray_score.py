"""`python -m handlers.batch_score ... --ray [ADDRESS]`: the same rows, scored on Ray Data.

The driver lists the work as the local scorer does (handlers/batch_sources.py): chunks of
--batch-size images, row ranges of an .npz or paths of a folder or list file. Ray Data maps
the chunks over a pool of actors, each holding one serving Predictor with onnxruntime's
intra-op threads set to the actor's CPU share (Ray sets OMP_NUM_THREADS, which onnxruntime
ignores). Per image an actor returns its id, the answer (JSON) or the error text; the results
come back in input order (preserve_order) and the driver writes them with the same RowWriter,
so the rows equal the local scorer's, column for column.

The model file and an .npz travel through Ray's object store. A folder or list file is read by
the workers, so on a cluster it must be on storage every node mounts at the same path.
Ray (the `ray` extra, pinned to 2.60: `map_batches(compute=ActorPoolStrategy(size=N))`, the form
that replaced `concurrency=N` in 2.51) is imported only here, never on the serving path.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import time
import warnings
from dataclasses import astuple
from pathlib import Path

import numpy as np
from tqdm import tqdm

from handlers.batch_sources import BatchScoreError, image_paths, npz_batch, open_npz, read_batch
from handlers.batch_writer import RowWriter
from handlers.decode import Shape

LOCAL = "local"  # --ray without an address: start a Ray on this machine, stop it after


class ScoringActor:
    """One Ray actor: a Predictor over the model bytes, scoring one chunk per call."""

    def __init__(self, model: list, shape: tuple, threads: int, providers: list[str] | None,
                 npz: list | None):
        import ray

        from handlers.predictor import Predictor

        handle, path = tempfile.mkstemp(suffix=".onnx")  # onnxruntime and the contract read files
        with os.fdopen(handle, "wb") as file:
            file.write(ray.get(model[0]))
        self.predictor = Predictor(path, threads=threads, providers=providers)
        os.unlink(path)
        self.shape = Shape(*shape)
        self.x = ray.get(npz[0]) if npz else None  # refs in a list: Ray leaves them unresolved

    def __call__(self, chunks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from handlers.batch_score import answer_batch, batch_rows

        rows = []
        for start, stop, paths in zip(chunks["start"], chunks["stop"], chunks["paths"]):
            if self.x is not None:
                batch = npz_batch(self.x, int(start), int(stop), self.shape)
            else:  # read by absolute path (a worker's cwd is not the driver's), named as given
                ids, absolute = json.loads(paths)
                batch = read_batch([Path(p) for p in absolute], self.shape)
                batch.ids = ids
            rows += batch_rows(batch, answer_batch(self.predictor, None, batch))
        return {"id": np.array([r[0] for r in rows], dtype=object),
                "answer": np.array([json.dumps(r[1]) if r[1] else "" for r in rows], dtype=object),
                "error": np.array([r[2] or "" for r in rows], dtype=object)}


ADDRESS = re.compile(r"^(ray://)?(\[[^\]]+\]|[^:/\s]+):(\d+)$")  # host:port, ray://host:port


def connect(address: str) -> None:
    """ray.init on a fresh local Ray or the cluster at `address`; a cluster that does not answer
    is a one-line BatchScoreError within seconds, not Ray's minutes of retries."""
    import ray
    import ray.data

    for name in ("ray", "ray.data"):  # Ray Data's execution plans and statistics stay quiet
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address == LOCAL:  # "local": a new Ray here, even when RAY_ADDRESS or a cluster is around
        address, quiet = "local", {**quiet, "include_dashboard": False}
    elif address != "auto":
        match = ADDRESS.match(address)
        if not match:
            raise BatchScoreError(f"--ray {address}: expected host:port, ray://host:port or auto")
        try:
            socket.create_connection((match[2].strip("[]"), int(match[3])), timeout=3).close()
        except OSError as exc:
            raise BatchScoreError(f"--ray {address}: no Ray cluster answers there ({exc})") from None
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BatchScoreError(f"--ray {address}: cannot connect ({one_line(exc)})") from None


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def work(source: Path, shape: Shape, batch_size: int) -> tuple[int, list[dict], np.ndarray | None]:
    """(image count, chunk items, the .npz `x` or None), checked before Ray starts."""
    if source.suffix == ".npz":
        x = open_npz(source, shape)
        items = [{"start": s, "stop": min(s + batch_size, len(x)), "paths": ""}
                 for s in range(0, len(x), batch_size)]
        return len(x), items, x
    paths = image_paths(source)
    items = [{"start": 0, "stop": 0,
              "paths": json.dumps([[str(p) for p in chunk], [os.path.abspath(p) for p in chunk]])}
             for chunk in (paths[s:s + batch_size] for s in range(0, len(paths), batch_size))]
    return len(paths), items, None


def actor_pool(threads: int) -> tuple[int, dict, list[str] | None]:
    """(actors, Ray resources per actor, onnxruntime providers): one actor per GPU when the
    cluster has GPUs and onnxruntime-gpu is installed, else per node its CPUs // threads."""
    import onnxruntime
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    gpus = sum(int(node.get("GPU", 0)) for node in nodes)
    if gpus and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return gpus, {"num_gpus": 1}, ["CUDAExecutionProvider", "CPUExecutionProvider"]
    actors = sum(int(node.get("CPU", 0)) // threads for node in nodes)
    if actors == 0:
        most = max((int(node.get("CPU", 0)) for node in nodes), default=0)
        raise BatchScoreError(f"--threads {threads}: no Ray node has {threads} CPUs (largest: {most})")
    return actors, {"num_cpus": threads}, None


def score_on_ray(source: Path, out: Path, model_path: Path, shape: Shape, address: str = LOCAL,
                 batch_size: int = 64, threads: int = 1, progress: bool = True) -> dict:
    """Score every image of `source` into `out` on Ray; the local scorer's summary, plus where
    the time went (`ray`). `out` is replaced only when the whole job succeeded."""
    import ray

    from handlers.batch_score import summary as batch_summary

    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    writer = RowWriter(partial)  # a bad --out fails before Ray starts
    try:
        total, items, x = work(source, shape, batch_size)  # so does a bad input
        started = time.perf_counter()
        connect(address)
        timings = {"connect_s": time.perf_counter() - started}
        try:
            result = run_job(writer, items, total, x, model_path, shape, threads, progress)
        except (ray.exceptions.RayError, ray.data.exceptions.ExecutionTimeoutError) as exc:
            raise BatchScoreError(f"--ray: the job failed ({one_line(exc)})") from None
        finally:
            ray.shutdown()  # stops the local Ray; only disconnects from a cluster
        writer.close()
        os.replace(partial, out)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    counts, first, pool = result
    summary = batch_summary(counts, time.perf_counter() - started, out)
    summary["ray"] = {**timings, "first_rows_s": first - started, **pool,
                      "threads_per_actor": threads, "address": address}
    return summary


def run_job(writer: RowWriter, items: list[dict], total: int, x: np.ndarray | None,
            model_path: Path, shape: Shape, threads: int, progress: bool) -> tuple[dict, float, dict]:
    """(counts, time the first rows arrived, the pool) of the Ray Data job writing every row."""
    import ray

    from handlers.batch_score import write_row

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in input order, as locally
    context.enable_progress_bars = False
    actors, resources, providers = actor_pool(threads)
    # max_restarts reaches the actors through map_batches' **ray_remote_args, which ray 2.60
    # flags as deprecated (removed in 2.64; the extra pins 2.60)
    warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
    scored = ray.data.from_items(items).map_batches(
        ScoringActor, batch_size=1, batch_format="numpy", **resources,
        compute=ray.data.ActorPoolStrategy(size=actors),  # ray >= 2.51 (concurrency= before)
        # a failed actor fails the job (one line) instead of restarting from arguments in the
        # object store, which Ray cannot promise to still hold
        max_restarts=0,
        fn_constructor_kwargs={"model": [ray.put(model_path.read_bytes())],
                               "shape": astuple(shape),
                               "threads": threads, "providers": providers,
                               "npz": [ray.put(x)] if x is not None else None})
    counts, first = {"images": 0, "errors": 0, "unknown": 0}, None
    with tqdm(total=total, unit="img", disable=not progress, desc="score") as bar:
        for rows in scored.iter_batches(batch_size=None, batch_format="numpy"):
            first = first or time.perf_counter()
            for image_id, answer, error in zip(rows["id"], rows["answer"], rows["error"]):
                write_row(writer, str(image_id), json.loads(answer) if answer else None,
                          error or None, counts)
            bar.update(len(rows["id"]))
    pool = {"actors": actors, "cpus": int(ray.cluster_resources().get("CPU", 0)), **resources}
    return counts, first or time.perf_counter(), pool
