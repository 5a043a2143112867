"""Start, wait for and stop a local TorchServe; the one owner of its two files. Stdlib only.

config.properties: `read_properties` reads it, `write_config` writes a variant of it (other
ports, model store, models) - the end-to-end tests and the benchmark call it, nobody edits the
text by hand. key_file.json: `read_inference_key` is its one reader (the batch scorer, the load
test and `start` call it).

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
KEY_FILE = "key_file.json"  # TorchServe writes it in its working directory
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


def read_inference_key(path: Path) -> str | None:
    """The inference token in TorchServe's key_file.json at `path`; None when there is no such
    file (token authorisation off, or the server has not written it yet)."""
    if not path.is_file():
        return None
    try:
        key = json.loads(path.read_text())["inference"]["key"]
    except (ValueError, KeyError, TypeError):  # not JSON, not utf-8, or another layout
        key = None
    if not isinstance(key, str):
        raise KeyFileError(f"{path}: not TorchServe's key_file.json")
    return key


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
            "key": read_inference_key(workdir / KEY_FILE), "seconds_to_healthy": ready}


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
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired, KeyFileError) as exc:
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
