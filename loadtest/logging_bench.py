"""`make bench-logging`: what quieter logging buys, TorchServe's own log4j2 against log4j2.xml.

The small model (model_store/MODEL.mar, frontend-bound: most of a request's time is outside
the handler) is served with each logging in turn, ABAB... over ROUNDS rounds, a fresh server
per phase (127.0.0.1:18080-18082, TMPDIR-isolated) warmed until its rate settles, then loaded
for SECONDS with CLIENTS closed-loop clients sending single PNGs. Per phase: requests/s, p99,
and the bytes written under logs/ (the console capture torchserve_start.log included) per
request. Ratios are taken within a round, then the median and spread over the rounds.
Writes runs/bench_logging/logging.json.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli_errors import OneLineErrorParser  # noqa: E402
from handlers.server import LOG_CONFIG, start, stop  # noqa: E402
from loadtest.closed_loop import http_load, spread, warm_until_settled  # noqa: E402
from loadtest.own_server import directory_bytes, own_server_config  # noqa: E402
from loadtest.traffic import digit_pngs  # noqa: E402

LOGGING = {"torchserve_default": None, "log4j2_xml": LOG_CONFIG}


def phase(archive: Path, model: str, log_config: Path | None, pngs: list[bytes], seconds: float,
          clients: int) -> dict:
    """One fresh server with `log_config`, warmed, then measured."""
    workdir = Path(tempfile.mkdtemp(prefix="logbench-"))
    store, env = workdir / "store", {"TMPDIR": str(workdir)}
    store.mkdir()
    shutil.copy(archive, store)
    config = own_server_config(workdir, store, model)
    try:
        server = start(config, workdir, env=env, timeout=120, log_config=log_config)
        port = int(server["inference"].rsplit(":", 1)[1])
        headers = {"Content-Type": "image/png", "Authorization": f"Bearer {server['key']}"}
        requests = [(png, headers) for png in pngs]
        path = f"/predictions/{model}"
        warm = warm_until_settled(port, path, requests, clients)
        before = directory_bytes(workdir / "logs")
        result = http_load(port, path, requests, clients, seconds)
        written = directory_bytes(workdir / "logs") - before
    finally:
        stop(workdir, env=env)
    shutil.rmtree(workdir, ignore_errors=True)
    return {**result, "warmup": warm, "log_bytes": written,
            "log_bytes_per_request": written / max(result["requests"], 1)}


def main() -> int:
    parser = OneLineErrorParser(prog="python loadtest/logging_bench.py", description=__doc__)
    parser.add_argument("--model", default="opensetmnist")
    parser.add_argument("--store", default="model_store")
    parser.add_argument("--run-dir", default="runs/default", help="the served model's run (its digits)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", default="runs/bench_logging")
    args = parser.parse_args()
    archive = Path(args.store) / f"{args.model}.mar"
    if not archive.is_file():
        parser.error(f"{archive} not found (make model_store/{args.model}.mar)")
    if args.rounds < 3 or args.seconds <= 0 or args.clients < 1:
        parser.error("--rounds must be >= 3, --seconds and --clients > 0")
    if not (Path(args.run_dir) / "metrics.json").is_file():
        parser.error(f"{args.run_dir}/metrics.json not found: --run-dir names the served model's run")
    images = digit_pngs(Path(args.run_dir))
    pngs = images["known"] + images["unknown"]
    phases: dict[str, list[dict]] = {name: [] for name in LOGGING}
    for round_ in range(args.rounds):
        order = list(LOGGING) if round_ % 2 == 0 else list(reversed(LOGGING))
        for name in order:
            phases[name].append(phase(archive, args.model, LOGGING[name], pngs, args.seconds, args.clients))
            last = phases[name][-1]
            print(f"round {round_ + 1} {name}: {last['req_per_s']:.0f} req/s, p99 {last['p99_ms']:.1f} ms, "
                  f"{last['log_bytes_per_request']:.1f} log bytes/request", flush=True)
    quiet, loud = phases["log4j2_xml"], phases["torchserve_default"]
    result = {"rounds": args.rounds, "seconds_per_phase": args.seconds, "clients": args.clients,
              "model": args.model, "phases": phases,
              "log_bytes_per_request": {name: spread([p["log_bytes_per_request"] for p in runs])
                                        for name, runs in phases.items()},
              "req_per_s": {name: spread([p["req_per_s"] for p in runs]) for name, runs in phases.items()},
              "ratios": {"req_per_s_quiet_vs_default": spread([q["req_per_s"] / d["req_per_s"]
                                                                for q, d in zip(quiet, loud)]),
                         "p99_quiet_vs_default": spread([q["p99_ms"] / d["p99_ms"]
                                                         for q, d in zip(quiet, loud)])}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logging.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({key: result[key] for key in ("log_bytes_per_request", "req_per_s", "ratios")},
                     indent=1))
    print(f"wrote {out / 'logging.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
