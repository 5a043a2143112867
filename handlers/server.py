"""Start, wait for and stop a local TorchServe; read its inference token. Stdlib only.

`python -m handlers.server start|stop` is what `make serve` / `make stop` run; the end-to-end
tests use the same functions with their own config, working directory and TMPDIR (TorchServe
keeps its pid file in $TMPDIR, so an isolated TMPDIR keeps a test server apart).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def read_properties(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def inference_key(workdir: Path) -> str | None:
    """The inference token TorchServe wrote to key_file.json in its working directory."""
    try:
        return json.loads((workdir / "key_file.json").read_text())["inference"]["key"]
    except (OSError, ValueError, KeyError):
        return None


def wait_until_ready(url: str, workdir: Path, timeout: float) -> float:
    """Poll /ping (it needs the token too) until every model is Healthy; seconds it took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        key = inference_key(workdir)
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


def start(config: Path, workdir: Path, env: dict | None = None, timeout: float = 90) -> dict:
    """torchserve --start with `config` in `workdir`; returns the addresses and the token."""
    props = read_properties(config)
    environment = {**os.environ, **(env or {})}
    environment["PATH"] = f"{BIN}{os.pathsep}{environment.get('PATH', '')}"
    (workdir / "logs").mkdir(exist_ok=True)
    launcher_log = workdir / "logs" / "torchserve_start.log"
    with open(launcher_log, "w") as log:  # not a pipe: the Java frontend keeps it open
        result = subprocess.run([str(BIN / "torchserve"), "--start", "--ncs", "--ts-config",
                                 str(config.resolve())], cwd=workdir, env=environment,
                                stdout=log, stderr=subprocess.STDOUT, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"torchserve --start failed (exit {result.returncode}): "
                           f"{launcher_log.read_text()[-500:]}")
    url = props.get("inference_address", "http://127.0.0.1:8080")
    ready = wait_until_ready(url, workdir, timeout)
    return {"inference": url, "metrics": props.get("metrics_address", "http://127.0.0.1:8082"),
            "key": inference_key(workdir), "seconds_to_healthy": ready}


def stop(workdir: Path, env: dict | None = None) -> None:
    environment = {**os.environ, **(env or {})}
    environment["PATH"] = f"{BIN}{os.pathsep}{environment.get('PATH', '')}"
    subprocess.run([str(BIN / "torchserve"), "--stop", "--foreground"], cwd=workdir,
                   env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handlers.server")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--config", default="config.properties")
    parser.add_argument("--model", default="opensetmnist")
    args = parser.parse_args(argv)
    workdir = Path.cwd()
    if args.action == "stop":
        stop(workdir)
        print("TorchServe stopped")
        return 0
    try:
        info = start(Path(args.config), workdir)
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"TorchServe healthy after {info['seconds_to_healthy']:.1f} s at {info['inference']}")
    print(f"inference token: {info['key']}")
    print("try:")
    print(f"  curl -H 'Authorization: Bearer {info['key']}' -T digit.png "
          f"{info['inference']}/predictions/{args.model}")
    print(f"  curl {info['metrics']}/metrics | grep OpenSet")
    print("stop with: make stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
