"""`make soak`: a long run at a steady load, watching what grows.

Starts TorchServe (127.0.0.1:18080-18082, TMPDIR-isolated working directory) with the repo's
config.properties and log4j2.xml serving model_store/MODEL.mar, then runs USERS closed-loop
clients for MINUTES with locust's think time (0-50 ms) and `make load`'s mix (known / unknown
digits as PNG, garbage that must answer 400). Every WINDOW seconds it samples: the frontend's
and the workers' resident memory, the bytes under logs/ (rolled parts included), requests,
failures, p50 and p99 of that window. A failure is any answer but 200 (400 for garbage) or no
answer; nothing is retried, so every fault shows. Writes runs/soak/soak.json and soak.png.
"""
from __future__ import annotations

import http.client
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli_errors import OneLineErrorParser  # noqa: E402
from handlers.server import environment_with, frontend_processes, start, stop  # noqa: E402
from loadtest.closed_loop import ClientThreads  # noqa: E402
from loadtest.own_server import directory_bytes, own_server_config  # noqa: E402
from loadtest.traffic import digit_pngs, parse_mix, pick  # noqa: E402


class Soak(ClientThreads):
    """USERS client threads; `window()` returns and resets the latencies and failures since
    the last call."""

    def __init__(self, port: int, path: str, token: str, images: dict, mix: dict, users: int):
        super().__init__(users)
        self.port, self.path, self.images, self.mix = port, path, images, mix
        self.headers = {"Authorization": f"Bearer {token}"}
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}

    def client(self, index: int) -> None:
        rng = random.Random(index)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while self.running.is_set():
            kind = pick(self.mix, rng)
            body, expected = ((b"\x00 not an image", 400) if kind == "bad"
                              else (rng.choice(self.images[kind]), 200))
            sent = time.perf_counter()
            try:
                connection.request("POST", self.path, body=body,
                                   headers={**self.headers, "Content-Type": "image/png"})
                response = connection.getresponse()
                response.read()
                problem = None if response.status == expected else str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                problem = type(exc).__name__
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            took = time.perf_counter() - sent
            with self.lock:
                self.latencies.append(took)
                if problem:
                    self.failures[problem] = self.failures.get(problem, 0) + 1
            time.sleep(rng.uniform(0.0, 0.05))
        connection.close()

    def window(self) -> tuple[list[float], dict[str, int]]:
        with self.lock:
            latencies, failures = self.latencies, self.failures
            self.latencies, self.failures = [], {}
        return latencies, failures


def resident_mb(env: dict) -> dict[str, float]:
    """RSS of the frontend (the JVM) and the sum over its workers, in MB."""
    import psutil

    rss = []
    for process in frontend_processes(environment_with(env)):
        try:
            rss.append(process.memory_info().rss / 2**20)
        except psutil.Error:  # a worker that just went away
            rss.append(0.0)
    return {"frontend_mb": rss[0] if rss else 0.0, "workers_mb": sum(rss[1:]),
            "workers": max(len(rss) - 1, 0)}


def summary(samples: list[dict]) -> dict:
    """The figures the README quotes: totals, p99 spread, and growth from the first minute
    (JVM warm-up) to the end."""
    steady = [s for s in samples if s["t_s"] >= 60] or samples
    requests = sum(s["requests"] for s in samples)
    failed = sum(sum(s["failures"].values()) for s in samples)
    return {"requests": requests, "failed": failed,
            "req_per_s": requests / samples[-1]["t_s"],
            "p99_ms_median": float(np.median([s["p99_ms"] for s in steady])),
            "p99_ms_max": max(s["p99_ms"] for s in steady),
            "frontend_mb": {"after_1_min": steady[0]["frontend_mb"], "end": samples[-1]["frontend_mb"]},
            "workers_mb": {"after_1_min": steady[0]["workers_mb"], "end": samples[-1]["workers_mb"]},
            "log_bytes_end": samples[-1]["log_bytes"],
            "log_bytes_per_request": samples[-1]["log_bytes"] / max(requests, 1)}


def plot(samples: list[dict], result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    axes[0].plot(minutes, [s["p99_ms"] for s in samples], label="p99")
    axes[0].plot(minutes, [s["p50_ms"] for s in samples], label="p50")
    axes[0].set_ylabel("ms per window")
    axes[1].plot(minutes, [s["requests"] / s["window_s"] for s in samples], label="requests/s")
    axes[1].plot(minutes, [sum(s["failures"].values()) for s in samples], "r.", label="failures")
    axes[2].plot(minutes, [s["frontend_mb"] for s in samples], label="frontend (JVM)")
    axes[2].plot(minutes, [s["workers_mb"] for s in samples], label="worker(s)")
    axes[2].set_ylabel("RSS MB")
    axes[3].plot(minutes, [s["log_bytes"] / 1e3 for s in samples], label="logs/")
    axes[3].set_ylabel("KB")
    titles = ["latency", "throughput and failures", "resident memory", "log bytes"]
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("minutes")
        ax.legend(fontsize=8)
    fig.suptitle(f"soak: {result['users']} users, {result['minutes']:g} min, "
                 f"{result['summary']['requests']} requests, {result['summary']['failed']} failed",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = OneLineErrorParser(prog="python loadtest/soak.py", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per sample")
    parser.add_argument("--mix", default="known=70,unknown=25,bad=5")
    parser.add_argument("--model", default="opensetmnist")
    parser.add_argument("--store", default="model_store")
    parser.add_argument("--run-dir", default="runs/default", help="the served model's run (its classes)")
    parser.add_argument("--out", default="runs/soak")
    args = parser.parse_args()
    if args.minutes <= 0 or args.users < 1 or args.window <= 0:
        parser.error("--minutes, --users and --window must be > 0")
    archive = Path(args.store) / f"{args.model}.mar"
    if not archive.is_file():
        parser.error(f"{archive} not found (make model_store/{args.model}.mar)")
    if not (Path(args.run_dir) / "metrics.json").is_file():
        parser.error(f"{args.run_dir}/metrics.json not found: --run-dir names the served model's run")
    try:
        mix = parse_mix(args.mix)
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    store = workdir / "store"
    store.mkdir()
    shutil.copy(archive, store)
    env = {"TMPDIR": str(workdir)}
    config = own_server_config(workdir, store, args.model)
    samples: list[dict] = []
    try:
        server = start(config, workdir, env=env, timeout=120)
        port = int(server["inference"].rsplit(":", 1)[1])
        load = Soak(port, f"/predictions/{args.model}", server["key"], digit_pngs(Path(args.run_dir)),
                    mix, args.users)
        started = time.perf_counter()
        with load:
            while time.perf_counter() - started < args.minutes * 60:
                time.sleep(args.window)
                latencies, failures = load.window()
                ms = np.array(latencies or [np.nan]) * 1000
                samples.append({"t_s": time.perf_counter() - started, "window_s": args.window,
                                "requests": len(latencies), "failures": failures,
                                "p50_ms": float(np.percentile(ms, 50)),
                                "p99_ms": float(np.percentile(ms, 99)),
                                "log_bytes": directory_bytes(workdir / "logs"), **resident_mb(env)})
                print(json.dumps(samples[-1]), flush=True)
    finally:
        stop(workdir, env=env)
    if not samples:
        print("error: no sample taken", file=sys.stderr)
        return 1
    result = {"users": args.users, "minutes": args.minutes, "mix": mix, "model": args.model,
              "summary": summary(samples), "samples": samples}
    (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(samples, result, out / "soak.png")
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out / 'soak.json'} and {out / 'soak.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
