"""`make drills`: what clients see while an operator (or a crash) acts on a loaded server.

Three drills against one TorchServe started here (127.0.0.1:18080-18082, TMPDIR-isolated) with
the repo's config.properties and log4j2.xml, each under closed-loop load from CLIENTS keep-alive
clients sending single PNGs and recording every request (sent, done, status, model.version):
- worker kill: SIGKILL the backend worker mid-load; failed requests, the time until a request
  sent after the kill is answered, failures after that;
- rollout: `handlers.rollout` switches to a new version (the same .onnx archived as version
  N+1) and back (rollback) mid-load; failed requests and which version answered, over time;
- stop: `handlers.server.stop` mid-load; what happened to the requests in flight when its
  SIGTERM went out and to those sent after it.
The tests (tests/test_operations.py) run the same drills on a tiny model and assert on them.
Writes runs/drills/drills.json and drills.png (requests per 100 ms by outcome, events marked).
"""
from __future__ import annotations

import http.client
import io
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handlers.rollout import Management, Rollout, rollback, rollout  # noqa: E402
from cli_errors import OneLineErrorParser  # noqa: E402
from handlers.server import KEY_FILE, environment_with, frontend_processes, read_key, start, stop  # noqa: E402
from loadtest.closed_loop import ClientThreads  # noqa: E402
from loadtest.own_server import own_server_config  # noqa: E402

CLIENTS = 8
WORKER = "model_service_worker"


class Traffic(ClientThreads):
    """`clients` closed-loop keep-alive clients POSTing `body` until stopped; every request is
    recorded as (sent, done, outcome, version): `sent` is read once the whole request is
    written (a request that failed before that counts as sent when it failed; a thread paused
    between the write and the clock reads it late, so a request can only look sent later than
    it was), outcome an HTTP status (5xx with TorchServe's message, e.g. '500 Worker died.') or
    an exception name."""

    def __init__(self, server: dict, model: str, body: bytes, content_type: str = "image/png",
                 clients: int = CLIENTS):
        super().__init__(clients)
        self.port = int(server["inference"].rsplit(":", 1)[1])
        self.path = f"/predictions/{model}"
        self.headers = {"Content-Type": content_type, "Authorization": f"Bearer {server['key']}"}
        self.body = body
        self.records: list[tuple[float, float, int | str, str | None]] = []
        self.answered = [0] * clients  # 200s per client, each written by its own thread

    def wait_answered(self, timeout: float = 60) -> None:
        """Until every client has had a 200 since this call: the server is keeping up with this
        load (a fresh or starved worker on a busy machine can take seconds), so what a drill does
        next starts from steady state."""
        before, deadline = list(self.answered), time.perf_counter() + timeout
        while any(now == then for now, then in zip(self.answered, before)):
            if time.perf_counter() > deadline:
                waiting = sum(now == then for now, then in zip(self.answered, before))
                raise RuntimeError(f"{waiting} of {len(before)} clients had no answer within {timeout:.0f} s")
            time.sleep(0.05)

    def client(self, index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        mine = []
        while self.running.is_set():
            sent, version = None, None
            try:
                connection.request("POST", self.path, body=self.body, headers=self.headers)
                sent = time.perf_counter()  # the whole request is written: from here it is in flight
                response = connection.getresponse()
                text = response.read()
                outcome: int | str = response.status
                if response.status == 200:
                    version = json.loads(text).get("model", {}).get("version")
                    self.answered[index] += 1
                elif response.status >= 500:  # TorchServe's own: its message says which fault
                    outcome = f"{response.status} {json.loads(text).get('message', '')}".strip()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                outcome = type(exc).__name__
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                time.sleep(0.01)  # a refused connect returns at once: do not spin
            done = time.perf_counter()
            mine.append((done if sent is None else sent, done, outcome, version))  # unwritten: never sent
        connection.close()
        with self.lock:
            self.records.extend(mine)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.records.sort()


def failures(records: list, since: float = float("-inf")) -> Counter:
    """Outcomes other than 200 of the requests sent at or after `since`."""
    return Counter(str(r[2]) for r in records if r[0] >= since and r[2] != 200)


def worker_kill_drill(server: dict, env: dict, model: str, body: bytes, before: float = 2.0,
                      after: float = 4.0) -> dict:
    """SIGKILL the backend worker(s) under load; failed requests and the recovery time."""
    with Traffic(server, model, body) as traffic:
        traffic.wait_answered()
        time.sleep(before)
        workers = [p for p in frontend_processes(environment_with(env))
                   if any(WORKER in part for part in p.cmdline())]
        killed_at = time.perf_counter()
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
        time.sleep(after)
    records, failed = traffic.records, failures(traffic.records)
    recovered = next((r for r in records if r[0] >= killed_at and r[2] == 200), None)
    recovery = recovered[1] if recovered else float("inf")
    return {"workers_killed": len(workers), "requests": len(records),
            "failed": dict(failed), "failed_total": sum(failed.values()),
            "recovery_s": recovery - killed_at,
            "failed_after_recovery": sum(failures(records, recovery).values()),
            "timeline": timeline(records, killed_at, {"worker killed": 0.0})}


def rollout_drill(server: dict, workdir: Path, store: Path, model: str, onnx: Path, body: bytes,
                  settle: float = 2.0) -> dict:
    """rollout to a new version, then rollback, under load; failures and versions seen."""
    management = Management(server["management"], read_key(workdir / KEY_FILE, "management"))
    rolling = Rollout(management, server["inference"], server["key"], model, drain_timeout=30,
                      say=lambda line: None)
    events: dict[str, float] = {}
    with Traffic(server, model, body) as traffic:
        traffic.wait_answered()
        time.sleep(settle)
        started = time.perf_counter()
        events["rollout"] = 0.0
        new = rollout(onnx, rolling, store)
        events["rolled out"] = time.perf_counter() - started
        time.sleep(settle)
        events["rollback"] = time.perf_counter() - started
        old = rollback(rolling, store)
        events["rolled back"] = time.perf_counter() - started
        time.sleep(settle)
    records, failed = traffic.records, failures(traffic.records)
    first_new = next((r[1] for r in records if r[3] == new), None)
    last_new = max((r[1] for r in records if r[3] == new), default=None)
    return {"requests": len(records), "failed": dict(failed),
            "failed_total": sum(failed.values()), "versions": {"before": old, "new": new},
            "answered_by": dict(Counter(r[3] for r in records if r[2] == 200)),
            "new_version_first_answer_s": None if first_new is None else first_new - started,
            "new_version_last_answer_s": None if last_new is None else last_new - started,
            "events_s": events, "timeline": timeline(records, started, events)}


def stop_drill(workdir: Path, env: dict, server: dict, model: str, body: bytes,
               before: float = 2.0, timeout: float = 30) -> dict:
    """stop() under load: the requests in flight when the SIGTERM went out (sent before it,
    answered or failed after it), and those sent after it."""
    with Traffic(server, model, body) as traffic:
        traffic.wait_answered()
        time.sleep(before)
        traffic.wait_answered()  # still keeping up just before the signal
        result = stop(workdir, env=env, timeout=timeout)
        time.sleep(0.5)
    records, signalled = traffic.records, result["signalled_at"]
    in_flight = [r for r in records if r[0] < signalled <= r[1]]
    after = [r for r in records if r[0] >= signalled]
    return {"stop_seconds": result["seconds"], "processes_killed": result["killed"],
            "in_flight_at_signal": dict(Counter(str(r[2]) for r in in_flight)),
            "sent_after_signal": dict(Counter(str(r[2]) for r in after)),
            "failed_before_signal": sum(failures([r for r in records if r[1] < signalled]).values()),
            "timeline": timeline(records, signalled, {"SIGTERM": 0.0})}


def timeline(records: list, origin: float, events: dict[str, float], step: float = 0.1) -> dict:
    """Requests finished per `step` seconds by outcome (200 per version), times from `origin`."""
    buckets: dict[str, Counter] = {}
    for _sent, done, outcome, version in records:
        key = f"200 v{version}" if outcome == 200 else str(outcome)
        buckets.setdefault(key, Counter())[int((done - origin) // step)] += 1
    return {"step_s": step, "events_s": events,
            "series": {key: sorted(counts.items()) for key, counts in buckets.items()}}


def png_for(onnx: Path) -> bytes:
    """A mid-grey PNG of the model's input size."""
    import numpy as np
    from PIL import Image

    from handlers.contract import load_model

    _, info = load_model(onnx, providers=["CPUExecutionProvider"])
    pixels = np.full((info.height, info.width, info.channels), 128, np.uint8)
    if info.channels == 1:
        pixels = pixels[..., 0]  # PIL's grey images are H x W
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    for ax, (name, result) in zip(axes, results.items()):
        line = result["timeline"]
        for key, points in sorted(line["series"].items()):
            xs = [i * line["step_s"] for i, _ in points]
            ax.plot(xs, [n / line["step_s"] for _, n in points], ".", ms=3, label=key)
        for label, at in line["events_s"].items():
            ax.axvline(at, color="grey", ls="--", lw=0.8)
            ax.text(at, ax.get_ylim()[1] * 0.95, label, rotation=90, va="top", fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("s from the event")
        ax.set_ylabel("requests / s finished")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    from export.archive import build_archive

    parser = OneLineErrorParser(prog="python loadtest/operations.py", description=__doc__)
    parser.add_argument("--run-dir", default="runs/default", help="the run whose model.onnx is served")
    parser.add_argument("--out", default="runs/drills")
    args = parser.parse_args()
    onnx = Path(args.run_dir) / "model.onnx"
    if not onnx.is_file():
        parser.error(f"{onnx} not found (make export)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="drills-"))
    store, model, env = workdir / "store", "opensetmnist", {"TMPDIR": str(workdir)}
    build_archive(onnx, model, "1", store, ort_threads=2)
    body = png_for(onnx)
    config = own_server_config(workdir, store, model)
    results, failed = {}, None
    drills = {"worker kill": lambda: worker_kill_drill(server, env, model, body),
              "rollout and rollback": lambda: rollout_drill(server, workdir, store, model, onnx, body),
              "graceful stop": lambda: stop_drill(workdir, env, server, model, body)}
    stage = "start"
    try:
        server = start(config, workdir, env=env, timeout=120)
        for stage, drill in drills.items():
            results[stage] = drill()
    except Exception as exc:  # noqa: BLE001 (the server did not start, stopped answering, ...)
        failed = f"{stage}: {type(exc).__name__}: {exc}"
    finally:
        stop(workdir, env=env)
    (out / "drills.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "drills.png").unlink(missing_ok=True)  # never beside another run's drills.json
    if results:
        plot(results, out / "drills.png")
    for name, result in results.items():
        print(name, json.dumps({k: v for k, v in result.items() if k != "timeline"}))
    if failed:
        kept = f" (the drills before it are in {out / 'drills.json'})" if results else ""
        print(f"error: {failed}{kept}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'drills.json'} and {out / 'drills.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
