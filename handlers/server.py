"""Start, wait for and stop a local TorchServe; the one owner of its two files. Stdlib only.

config.properties: `read_properties` reads it, `write_config` writes a variant of it (other
ports, model store, models) - the end-to-end tests and the benchmark call it, nobody edits the
text by hand. key_file.json: `read_inference_key` is its one reader (the batch scorer, the load
test and `start` call it).

`python -m handlers.server start|stop` is what `make serve` / `make stop` run; `rollout` and
`rollback` (handlers.rollout) change the served version through the management API. The
end-to-end tests use the same functions with their own config, working directory and TMPDIR
(TorchServe keeps its pid file in $TMPDIR, so an isolated TMPDIR keeps a test server apart).

`start` checks Java and the three ports first (handlers.preflight: one line, no 90 s wait) and
passes log4j2.xml, which keeps every log file size-capped and the console capture empty.
`stop` is graceful and bounded: TorchServe closes its listeners, answers what is in flight,
then exits; after `timeout` seconds whatever is left of it (frontend and workers) is killed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from cli_errors import OneLineErrorParser
from handlers.preflight import PreflightError, check_java, check_management, check_ports

BIN = Path(sys.executable).parent
KEY_FILE = "key_file.json"  # TorchServe writes it in its working directory
LOG_CONFIG = Path(__file__).resolve().parents[1] / "log4j2.xml"
PID_FILE = ".model_server.pid"  # TorchServe's launcher keeps it in $TMPDIR
FRONTEND = "org.pytorch.serve.ModelServer"
ADDRESSES = ("inference_address", "management_address", "metrics_address")


class KeyFileError(ValueError):
    """A key file that is there but is not TorchServe's key_file.json."""


def _property(line: str) -> tuple[str, str] | None:
    """(key, value) of a `key=value` line of config.properties; None for comments and blanks."""
    if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
        return None
    key, _, value = line.partition("=")
    return key.strip(), value.strip()


def read_properties(path: Path) -> dict[str, str]:
    """The `key=value` properties of a config.properties file."""
    return dict(item for item in map(_property, path.read_text().splitlines()) if item)


def _shift_port(address: str, offset: int) -> str:
    """'http://127.0.0.1:8080' moved `offset` ports up."""
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + offset}"


def write_config(source: Path, target: Path, overrides: dict[str, str],
                 port_offset: int = 0) -> Path:
    """Write config.properties `source` to `target` with its three addresses moved `port_offset`
    ports up and the properties in `overrides` replaced (appended when absent); comments and
    every other line stay as they are."""
    values = {key: _shift_port(value, port_offset)
              for key, value in read_properties(source).items() if key in ADDRESSES}
    values.update(overrides)
    lines, written = [], set()
    for line in source.read_text().splitlines():
        item = _property(line)
        if item and item[0] in values:
            line = f"{item[0]}={values[item[0]]}"
            written.add(item[0])
        lines.append(line)
    lines += [f"{key}={value}" for key, value in values.items() if key not in written]
    target.write_text("\n".join(lines) + "\n")
    return target


def read_key(path: Path, api: str) -> str | None:
    """The `api` ('inference' or 'management') token in TorchServe's key_file.json at `path`;
    None when there is no such file (token authorisation off, or not written yet)."""
    if not path.is_file():
        return None
    try:
        key = json.loads(path.read_text())[api]["key"]
    except (ValueError, KeyError, TypeError):  # not JSON, not utf-8, or another layout
        key = None
    if not isinstance(key, str):
        raise KeyFileError(f"{path}: not TorchServe's key_file.json")
    return key


def read_inference_key(path: Path) -> str | None:
    """The inference token (clients); the management token is for handlers.rollout only."""
    return read_key(path, "inference")


def wait_until_ready(url: str, workdir: Path, timeout: float) -> float:
    """Poll /ping (it needs the token too) until every model is Healthy; seconds it took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            key = read_inference_key(workdir / KEY_FILE)
        except KeyFileError:  # TorchServe may be writing it right now
            key = None
        request = urllib.request.Request(f"{url}/ping",
                                         headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if json.loads(response.read()).get("status") == "Healthy":
                    return time.perf_counter() - started
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"TorchServe at {url} not healthy after {timeout:.0f} s (see logs/)")


def expected_models(props: dict[str, str]) -> list[str]:
    """The model names load_models asks for ('name=file.mar' or 'file.mar'); [] for 'all'."""
    entries = [entry.strip() for entry in props.get("load_models", "").split(",") if entry.strip()]
    if any(entry.lower() == "all" for entry in entries):
        return []
    return [entry.partition("=")[0] if "=" in entry else entry.removesuffix(".mar") for entry in entries]


def last_problem(log: Path) -> str:
    """The last WARN/ERROR line of a TorchServe log, or a pointer to the log."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines()
                 if "[WARN " in line or "[ERROR" in line]
    except OSError:
        lines = []
    return lines[-1].split(" - ", 1)[-1][:300] if lines else f"see {log}"


def check_models_loaded(props: dict[str, str], workdir: Path) -> None:
    """/ping is Healthy with no model at all: ask the management API (listing works with the
    model API off too) that every model of load_models is registered; RuntimeError naming the
    log's reason otherwise."""
    names = expected_models(props)
    if not names:
        return
    key = read_key(workdir / KEY_FILE, "management")
    request = urllib.request.Request(f"{props.get('management_address', 'http://127.0.0.1:8081')}/models",
                                     headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        registered = {model["modelName"] for model in json.loads(response.read())["models"]}
    missing = [name for name in names if name not in registered]
    if missing:
        raise RuntimeError(f"model {', '.join(missing)} did not load: "
                           f"{last_problem(workdir / 'logs' / 'ts_log.log')}")


def environment_with(env: dict | None) -> dict[str, str]:
    """os.environ with `env` on top and this venv's bin first on PATH (torchserve, java checks)."""
    environment = {**os.environ, **(env or {})}
    environment["PATH"] = f"{BIN}{os.pathsep}{environment.get('PATH', '')}"
    return environment


def start(config: Path, workdir: Path, env: dict | None = None, timeout: float = 90,
          log_config: Path | None = LOG_CONFIG) -> dict:
    """torchserve --start with `config` in `workdir`; returns the addresses and the token.
    Java and the ports are checked first (PreflightError, one line). `log_config` None runs
    TorchServe's own logging (the benchmark's "before")."""
    props = read_properties(config)
    environment = environment_with(env)
    check_java(environment)
    check_ports(props, config.name)
    check_management(props)
    (workdir / "logs").mkdir(exist_ok=True)
    launcher_log = workdir / "logs" / "torchserve_start.log"
    command = [str(BIN / "torchserve"), "--start", "--ncs", "--ts-config", str(config.resolve())]
    if log_config is not None:
        command += ["--log-config", str(log_config)]
    with open(launcher_log, "w") as log:  # not a pipe: the Java frontend keeps it open
        result = subprocess.run(command, cwd=workdir, env=environment, stdout=log,
                                stderr=subprocess.STDOUT, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"torchserve --start failed (exit {result.returncode}): "
                           f"{launcher_log.read_text()[-500:]}")
    url = props.get("inference_address", "http://127.0.0.1:8080")
    try:
        ready = wait_until_ready(url, workdir, timeout)
        check_models_loaded(props, workdir)
    except BaseException as exc:  # no half-started server holding the ports
        stop(workdir, env=env, timeout=30)
        if isinstance(exc, (TimeoutError, RuntimeError, OSError, KeyFileError, ValueError, KeyError)):
            raise RuntimeError(f"{exc} (server stopped)") from None
        raise
    return {"inference": url, "metrics": props.get("metrics_address", "http://127.0.0.1:8082"),
            "management": props.get("management_address", "http://127.0.0.1:8081"),
            "key": read_inference_key(workdir / KEY_FILE), "seconds_to_healthy": ready}


def pid_file(environment: dict[str, str]) -> Path:
    """TorchServe's launcher writes the frontend's pid to $TMPDIR/.model_server.pid."""
    return Path(environment.get("TMPDIR") or tempfile.gettempdir()) / PID_FILE


def frontend_processes(environment: dict[str, str]) -> list:
    """The running TorchServe frontend of this $TMPDIR (its pid file) and its workers; [] when
    none runs. psutil comes with torchserve."""
    import psutil

    try:
        frontend = psutil.Process(int(pid_file(environment).read_text().split()[0]))
        if FRONTEND not in frontend.cmdline():  # a stale pid file, the pid now someone else's
            return []
        return [frontend, *frontend.children(recursive=True)]
    except (OSError, ValueError, IndexError, psutil.Error):
        return []


def stop(workdir: Path, env: dict | None = None, timeout: float = 30) -> dict:
    """Graceful, bounded stop: SIGTERM to the frontend (what torchserve --stop sends); TorchServe
    closes its listeners, answers the requests in flight and exits. Whatever is left of it after
    `timeout` seconds (frontend or workers) is killed. Returns the seconds it took, how many
    processes were found and killed, and `signalled_at` (time.perf_counter() just before the SIGTERM)."""
    import psutil

    environment = environment_with(env)
    processes = frontend_processes(environment)
    started = time.perf_counter()
    if not processes:  # nothing of ours runs: let the launcher clear a stale pid file
        subprocess.run([str(BIN / "torchserve"), "--stop"], cwd=workdir, env=environment,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        return {"seconds": time.perf_counter() - started, "found": 0, "killed": 0, "signalled_at": None}
    signalled_at = time.perf_counter()  # taken before: a request written earlier preceded the signal
    try:
        processes[0].terminate()
    except psutil.Error:
        pass
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    (workdir / KEY_FILE).unlink(missing_ok=True)  # as torchserve --stop does: stale tokens
    pid_file(environment).unlink(missing_ok=True)
    return {"seconds": time.perf_counter() - started, "found": len(processes), "killed": len(alive),
            "signalled_at": signalled_at}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m handlers.server")
    actions = parser.add_subparsers(dest="action", required=True)
    starting = actions.add_parser("start", help="start TorchServe (what `make serve` runs)")
    stopping = actions.add_parser("stop", help="graceful, bounded stop (what `make stop` runs)")
    stopping.add_argument("--timeout", type=float, default=30,
                          help="seconds for in-flight requests to finish before the rest is killed")
    rolling = actions.add_parser("rollout", help="serve MODEL.onnx as the model's next version")
    rolling.add_argument("onnx", help="a contract .onnx written by `python -m export`")
    rolling_back = actions.add_parser("rollback", help="serve the version before the current one")
    for sub in (starting, stopping, rolling, rolling_back):
        sub.add_argument("--config", default="config.properties")
    for sub in (starting, rolling, rolling_back):
        sub.add_argument("--model", default="opensetmnist")
    for sub in (rolling, rolling_back):
        sub.add_argument("--drain-timeout", type=float, default=30,
                         help="seconds to wait for the old version's queue to empty")
        sub.add_argument("--drain-grace", type=float, default=2.0,
                         help="seconds more for the batch the old version's worker holds "
                              "(above the model's batch time)")
    args = parser.parse_args(argv)
    workdir = Path.cwd()
    if args.action in ("rollout", "rollback"):
        from handlers.rollout import main as rollout_main

        return rollout_main(args, workdir)
    if args.action == "stop":
        if not 0 < args.timeout < float("inf"):
            parser.error("--timeout must be a number of seconds > 0")
        result = stop(workdir, timeout=args.timeout)
        if not result["found"]:
            print("TorchServe is not running")
        else:
            killed = (f", {result['killed']} process(es) killed after {args.timeout:g} s"
                      if result["killed"] else "")
            print(f"TorchServe stopped in {result['seconds']:.1f} s{killed}")
        return 0
    try:
        info = start(Path(args.config), workdir)
    except PreflightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired, KeyFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"TorchServe healthy after {info['seconds_to_healthy']:.1f} s at {info['inference']}")
    print(f"inference token: {info['key']}")
    print("try (always name the Content-Type: without it curl sends a form post, which "
          "TorchServe 0.12 answers 500):")
    print(f"  curl -H 'Authorization: Bearer {info['key']}' -H 'Content-Type: image/png' "
          f"--data-binary @digit.png {info['inference']}/predictions/{args.model}")
    print(f"  curl {info['metrics']}/metrics | grep OpenSet")
    print(f"new version without downtime: python -m handlers.server rollout MODEL.onnx --model {args.model}")
    print("stop with: make stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
