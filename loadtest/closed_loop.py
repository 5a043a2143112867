"""Closed-loop HTTP load against 127.0.0.1, the one load generator of the benchmarks and soak.

`http_load` runs `concurrency` keep-alive clients for a fixed time and returns throughput and
latency percentiles (answered requests only count as throughput). `ClientThreads` runs clients
until told to stop (the drills' and the soak's load). `warm_until_settled` runs
short windows until two consecutive ones agree, so no phase is measured on a cold JVM or cold
caches. `spread` summarises one ratio measured over interleaved rounds.
"""
from __future__ import annotations

import http.client
import threading
import time

import numpy as np


def http_load(port: int, path: str, requests: list[tuple[bytes, dict[str, str]]],
              concurrency: int, seconds: float, images_per_request: int = 1,
              warmup: float = 0.0, seed: int = 0) -> dict:
    """Closed-loop load: `concurrency` keep-alive clients each POSTing random (body, headers)
    pairs of `requests`; `warmup` seconds unrecorded, then `seconds` recorded; throughput and
    latency percentiles. A failed connection is reopened and counts as one error."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    record_from = time.perf_counter() + warmup
    deadline = record_from + seconds

    def client(index: int) -> None:
        rng = np.random.default_rng(seed * 1000 + index)
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
        connection.close()
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
    answered = len(latencies) - errors[0]
    return {"requests": len(latencies), "errors": errors[0], "seconds": elapsed,
            "req_per_s": answered / elapsed,
            "images_per_s": answered * images_per_request / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "concurrency": concurrency}


class ClientThreads:
    """`clients` threads running `self.client(index)` while `self.running` is set; a context
    manager: entering starts them, leaving stops and joins them."""

    def __init__(self, clients: int):
        self.lock, self.running = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True)
                        for i in range(clients)]

    def client(self, index: int) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.running.set()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.running.clear()
        for thread in self.threads:
            thread.join(timeout=60)


def settled(rates: list[float], tolerance: float) -> bool:
    """The last two windows' rates agree within `tolerance` (relative to the larger one)."""
    return len(rates) >= 2 and abs(rates[-1] - rates[-2]) <= tolerance * max(rates[-2:])


def warm_until_settled(port: int, path: str, requests: list[tuple[bytes, dict[str, str]]],
                       concurrency: int, window: float = 2.0, tolerance: float = 0.05,
                       max_seconds: float = 40.0) -> dict:
    """Load in `window`-second windows until two consecutive windows' req/s agree within
    `tolerance`, or `max_seconds` have passed; the windows' rates and whether it settled."""
    rates: list[float] = []
    started = time.perf_counter()
    while not settled(rates, tolerance) and time.perf_counter() - started < max_seconds:
        rates.append(http_load(port, path, requests, concurrency, window)["req_per_s"])
    return {"window_req_per_s": rates, "settled": settled(rates, tolerance),
            "seconds": time.perf_counter() - started}


def spread(values: list[float]) -> dict:
    """Median, min, max and relative spread ((max - min) / median) of one ratio over rounds."""
    middle = float(np.median(values))
    return {"median": middle, "min": float(min(values)), "max": float(max(values)),
            "spread": float((max(values) - min(values)) / middle) if middle
            else (0.0 if max(values) == min(values) else float("nan")),
            "rounds": [float(v) for v in values]}
