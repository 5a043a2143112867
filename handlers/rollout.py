"""Zero-downtime model updates through TorchServe's management API (loopback only).

`python -m handlers.server rollout MODEL.onnx --model NAME`:
1. archive MODEL.onnx (contract-checked) as NAME's next version, STORE/NAME.vN.mar;
2. register it with the serving version's workers and batching, wait until its workers are
   READY, and send it one canary request (a blank image) that must answer 200 with
   model.version N; a version that fails is unregistered and nothing else changes;
3. make it the default: new requests go to it from here on;
4. drain the old version (its queue empty on two polls in a row, then one batch window more)
   and unregister it.
`rollback` does 2-4 towards the version served before the current one (its archive stays in
the store). STORE/NAME.versions.json is the stack of versions served (locked while a rollout
or rollback runs); the server itself says which one is current. A version number that served
is never given out again, so model.version names one archive.

The management API answers on loopback only (start refuses anything else) and needs its own
token (key_file.json's "management" key, never the inference one). The archive is built by
`python -m export.archive` as a separate process: handlers/ imports nothing from export/.
A restart serves what config.properties names.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import yaml

from handlers.preflight import PreflightError, require_loopback
from handlers.server import KEY_FILE, KeyFileError, read_key, read_properties

POLL_S = 0.2
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # what export.archive accepts as a model name


class RolloutError(RuntimeError):
    """The rollout or rollback did not happen (or was undone); the message says why."""


class RolloutFileError(RolloutError):
    """A file the rollout needs is missing or not what it should be (exit 2)."""


class OldVersionLeft(RolloutError):
    """The new version serves (it is the default), but the old one could not be unregistered."""


class UndoFailed(RolloutError):
    """The new version failed before serving, and unregistering it failed too: it is still
    registered (not the default), so its archive stays."""


class Management:
    """TorchServe's management API at `url` with the management token."""

    def __init__(self, url: str, token: str | None, timeout: float = 120):
        self.url, self.token, self.timeout = url, token, timeout

    def call(self, method: str, path: str, query: dict | None = None) -> object:
        """The decoded JSON answer, or RolloutError with TorchServe's message."""
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(url, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message", "")
            except (ValueError, AttributeError):
                message = ""
            raise RolloutError(f"management API {method} {path} answered {exc.code}"
                               + (f": {message}" if message else "")) from None
        except (urllib.error.URLError, OSError) as exc:
            raise RolloutError(f"management API at {self.url} unreachable ({exc}); is the "
                               "server running (`make serve`)?") from None

    def describe(self, name: str, version: str | None = None) -> dict:
        """The description of one version (the default one when `version` is None)."""
        answer = self.call("GET", f"/models/{name}" + (f"/{version}" if version else ""))
        return answer[0] if isinstance(answer, list) and answer else {}

    def versions(self, name: str) -> list[str]:
        return [entry["modelVersion"] for entry in self.call("GET", f"/models/{name}/all")]


def next_version(versions: list[str]) -> str:
    """One above the highest version (numeric: '1', '2'; TorchServe also accepts '1.0')."""
    try:
        return str(int(max(float(v) for v in versions)) + 1)
    except ValueError:
        raise RolloutError(f"versions {versions} are not numbers; cannot pick the next one") from None


def archive_settings(mar: Path) -> dict:
    """The handler settings (ort_threads, top_k) in an archive's model-config.yaml."""
    try:
        with zipfile.ZipFile(mar) as archive:
            return (yaml.safe_load(archive.read("model-config.yaml")) or {}).get("handler", {})
    except (OSError, KeyError, zipfile.BadZipFile, yaml.YAMLError):
        return {}


class History:
    """STORE/NAME.versions.json: a stack of the versions served, [{"version", "mar"}], the
    current one on top. rollout pushes, rollback pops: two rollbacks go two versions back."""

    def __init__(self, store: Path, name: str):
        self.path = store / f"{name}.versions.json"
        try:
            self.entries: list[dict] = json.loads(self.path.read_text()) if self.path.is_file() else []
            valid = isinstance(self.entries, list) and all(
                isinstance(entry, dict) and {"version", "mar"} <= set(entry) for entry in self.entries)
        except (ValueError, UnicodeDecodeError):
            valid = False
        if not valid:
            raise RolloutFileError(f"{self.path} is not a version list written by rollout; "
                                   "move it away to start a new one")

    def save(self) -> None:
        """Written whole or not at all (a temporary file renamed over it)."""
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.entries, indent=1) + "\n")
        os.replace(partial, self.path)

    def serving(self, version: str, mar: str) -> None:
        """Make the stack end at `version` (what the server says it serves): cut what was
        rolled out after it (a restart serves config.properties' version), or push it."""
        for i in range(len(self.entries) - 1, -1, -1):
            if self.entries[i]["version"] == version:
                del self.entries[i + 1:]
                return
        self.entries.append({"version": version, "mar": mar})

    def previous(self) -> dict:
        """The entry under the current one; RolloutError when there is none."""
        if len(self.entries) < 2:
            raise RolloutError(f"no version before {self.entries[-1]['version'] if self.entries else '?'} "
                               f"in {self.path}: nothing to roll back to")
        return self.entries[-2]


class Rollout:
    """The steps shared by rollout and rollback, against one server's management API."""

    def __init__(self, management: Management, inference_url: str, inference_key: str | None,
                 name: str, drain_timeout: float, drain_grace: float = 2.0, say=print):
        self.api, self.inference_url, self.inference_key = management, inference_url, inference_key
        self.name, self.drain_timeout, self.drain_grace, self.say = name, drain_timeout, drain_grace, say

    def register(self, mar: str, current: dict) -> str:
        """Register `mar` with `current`'s workers and batching; its version."""
        workers = max(1, int(current.get("minWorkers", 1)))
        answer = self.api.call("POST", "/models", {
            "url": mar, "model_name": self.name, "initial_workers": workers,
            "batch_size": current.get("batchSize", 1), "max_batch_delay": current.get("maxBatchDelay", 100),
            "response_timeout": current.get("responseTimeout", 120), "synchronous": "true"})
        self.say(f"registered {mar}: {answer.get('status', answer) if isinstance(answer, dict) else answer}")
        version = self.version_of(mar)
        if version is None:
            raise RolloutError(f"{mar} is not among {self.name}'s registered versions")
        return version

    def version_of(self, mar: str) -> str | None:
        """The registered version served from archive `mar`, or None."""
        for entry in self.api.call("GET", f"/models/{self.name}/all"):
            if entry.get("modelUrl") == mar:
                return entry["modelVersion"]
        return None

    def undo(self, mar: str, old: str, reason: BaseException) -> RolloutError:
        """Unregister whatever of `mar` got registered; the error that says what serves."""
        text = str(reason) if isinstance(reason, RolloutError) else f"interrupted ({type(reason).__name__})"
        try:
            new = self.version_of(mar)
            if new is not None:
                self.api.call("DELETE", f"/models/{self.name}/{new}")
        except RolloutError as cleanup:
            return UndoFailed(f"{text}; and unregistering {mar} failed too ({cleanup}): version {old} "
                              f"still serves, {mar} may still be registered (not the default)")
        return RolloutError(f"{text}; {mar} unregistered, version {old} still serves")

    def wait_ready(self, version: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self.api.describe(self.name, version).get("workers", [])
            if workers and all(worker.get("status") == "READY" for worker in workers):
                return
            time.sleep(POLL_S)
        raise RolloutError(f"version {version}'s workers not READY after {timeout:.0f} s")

    def canary(self, version: str, shape: tuple[int, int, int]) -> None:
        """One blank image straight to `version`: 200 and model.version == version, or error."""
        body = json.dumps({"pixels": [[[0] * shape[2]] * shape[1]] * shape[0]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.inference_key:
            headers["Authorization"] = f"Bearer {self.inference_key}"
        request = urllib.request.Request(f"{self.inference_url}/predictions/{self.name}/{version}",
                                         data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                served = json.loads(response.read()).get("model", {}).get("version")
        except urllib.error.HTTPError as exc:
            raise RolloutError(f"version {version}'s canary request answered {exc.code}: "
                               f"{exc.read()[:200].decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
            raise RolloutError(f"version {version}'s canary request failed ({exc})") from None
        if served != version:
            raise RolloutError(f"version {version}'s canary was answered by version {served}")

    def drain(self, version: str, batch_delay_ms: float) -> float:
        """Wait until `version`'s queue is empty on two polls in a row, then one batch window
        and `drain_grace` seconds more: the queue does not count the batch a worker holds, and
        unregistering answers that batch 500 "Worker scaled down." (set the grace above the
        model's batch time); the seconds it took."""
        started = time.monotonic()
        empty = 0
        while empty < 2 and time.monotonic() - started < self.drain_timeout:
            status = self.api.describe(self.name, version).get("jobQueueStatus", {})
            empty = empty + 1 if status.get("pendingRequests", 0) == 0 else 0
            time.sleep(POLL_S)
        if empty < 2:
            self.say(f"warning: version {version}'s queue not empty after {self.drain_timeout:g} s")
        time.sleep(batch_delay_ms / 1000 + self.drain_grace)
        return time.monotonic() - started

    def switch(self, mar: str, shape: tuple[int, int, int]) -> tuple[str, str]:
        """Register `mar`, canary it, make it the default, drain and unregister the old default.
        (old version, new version). Until the new version is the default any failure, an
        interrupt included, unregisters it (RolloutError: the old version serves; UndoFailed
        when that failed too); after that, OldVersionLeft."""
        current = self.api.describe(self.name)
        old = current.get("modelVersion")
        if not old:
            raise RolloutError(f"model {self.name} is not registered on this server")
        started = time.monotonic()
        try:
            new = self.register(mar, current)
            self.wait_ready(new)
            self.canary(new, shape)
            self.api.call("PUT", f"/models/{self.name}/{new}/set-default")
        except BaseException as exc:
            error = self.undo(mar, old, exc)
            if isinstance(exc, Exception):
                raise error from None
            raise
        self.say(f"version {new} is the default ({time.monotonic() - started:.1f} s after registering)")
        try:
            drained = self.drain(old, float(current.get("maxBatchDelay", 100)))
            self.api.call("DELETE", f"/models/{self.name}/{old}")
        except Exception as exc:  # noqa: BLE001 - whatever it was, version `new` serves now
            raise OldVersionLeft(f"version {new} serves, but version {old} is still registered ({exc}); "
                                 f"unregister it: DELETE /models/{self.name}/{old}") from None
        self.say(f"version {old} drained in {drained:.1f} s and unregistered")
        return old, new


def model_shape(mar: Path) -> tuple[int, int, int]:
    """(C, H, W) of the contract .onnx inside an archive."""
    from handlers.contract import load_model

    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(mar) as archive:
        onnx_name = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
        archive.extract(onnx_name, tmp)
        _, info = load_model(Path(tmp) / onnx_name, providers=["CPUExecutionProvider"])
    return info.channels, info.height, info.width


def build_archive(onnx: Path, name: str, version: str, directory: Path, settings: dict) -> Path:
    """`python -m export.archive` (contract check included) into `directory`; the .mar, or
    RolloutFileError with its one-line error."""
    command = [sys.executable, "-m", "export.archive", str(onnx.resolve()), "--name", name,
               "--version", version, "--store", str(directory),
               "--ort-threads", str(int(settings.get("ort_threads", 1))),
               "--top-k", str(int(settings.get("top_k", 3)))]
    result = subprocess.run(command, capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit {result.returncode}"]
        raise RolloutFileError(lines[-1].removeprefix("error: "))
    return directory / f"{name}.mar"


def rollout(onnx: Path, rolling: Rollout, store: Path) -> str:
    """Archive `onnx` as the next version in `store` and switch to it; the new version."""
    name = rolling.name
    current = rolling.api.describe(name)
    if not current:
        raise RolloutError(f"model {name} is not registered on this server")
    history = History(store, name)
    history.serving(current["modelVersion"], current["modelUrl"])
    used = [*rolling.api.versions(name), *(e["version"] for e in history.entries),
            *(path.name[len(name) + 2:-4] for path in store.glob(f"{name}.v*.mar"))]
    version = next_version([v for v in used if re.fullmatch(r"\d+(\.\d+)?", v)])
    mar = f"{name}.v{version}.mar"
    with tempfile.TemporaryDirectory() as tmp:
        built = build_archive(onnx, name, version, Path(tmp), archive_settings(store / current["modelUrl"]))
        shutil.move(built, store / mar)
    left = None
    try:
        rolling.switch(mar, model_shape(store / mar))
    except OldVersionLeft as exc:
        left = exc  # the new version serves: recorded below all the same
    except UndoFailed:
        raise  # still registered: its archive stays
    except BaseException:
        (store / mar).unlink(missing_ok=True)  # registered nowhere: switch() unregistered it
        raise
    history.entries.append({"version": version, "mar": mar})
    history.save()
    if left:
        raise left
    return version


def rollback(rolling: Rollout, store: Path) -> str:
    """Serve the version served before the current one again; that version."""
    history = History(store, rolling.name)
    current = rolling.api.describe(rolling.name)
    if not current:
        raise RolloutError(f"model {rolling.name} is not registered on this server")
    history.serving(current["modelVersion"], current["modelUrl"])
    target = history.previous()
    if not (store / target["mar"]).is_file():
        raise RolloutError(f"{store / target['mar']} is gone: version {target['version']} cannot be served")
    left = None
    try:
        rolling.switch(target["mar"], model_shape(store / target["mar"]))
    except OldVersionLeft as exc:
        left = exc  # the target serves: recorded below all the same
    history.entries.pop()
    history.save()
    if left:
        raise left
    return target["version"]


class Lock:
    """An exclusive lock on STORE/NAME.versions.lock: one rollout or rollback at a time."""

    def __init__(self, store: Path, name: str):
        self.path = store / f"{name}.versions.lock"

    def __enter__(self) -> Lock:
        self.file = open(self.path, "w")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise RolloutError(f"another rollout or rollback of this model runs ({self.path})") from None
        return self

    def __exit__(self, *_) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def main(args: argparse.Namespace, workdir: Path) -> int:
    """`python -m handlers.server rollout|rollback` (parsed there): exit 0, 1 (the server said
    no; the message says what serves) or 2 (bad arguments or files)."""
    from handlers.contract import ModelFileError

    try:
        if not NAME.fullmatch(args.model):
            raise RolloutFileError(f"--model {args.model!r}: use letters, digits, '_' and '-' only")
        if not (0 < args.drain_timeout < math.inf and 0 <= args.drain_grace < math.inf):
            raise RolloutFileError("--drain-timeout must be a number > 0 and --drain-grace >= 0")
        props = read_properties(Path(args.config))
        if props.get("enable_model_api", "false").lower() != "true":
            raise RolloutFileError(f"{args.config} has enable_model_api=false: rollouts need the "
                                   "management API (loopback only)")
        address = require_loopback(props.get("management_address", "http://127.0.0.1:8081"))
        management = Management(address, read_key(workdir / KEY_FILE, "management"))
        rolling = Rollout(management, props.get("inference_address", "http://127.0.0.1:8080"),
                          read_key(workdir / KEY_FILE, "inference"), args.model, args.drain_timeout,
                          args.drain_grace)
        store = workdir / props.get("model_store", "model_store")  # TorchServe's cwd is workdir
        if args.action == "rollout" and not Path(args.onnx).is_file():
            raise RolloutFileError(f"{args.onnx}: no such model file")
        with Lock(store, args.model):
            version = rollout(Path(args.onnx), rolling, store) if args.action == "rollout" \
                else rollback(rolling, store)
    except (RolloutFileError, ModelFileError, KeyFileError, PreflightError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RolloutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (see the server's versions: GET /models/NAME/all)", file=sys.stderr)
        return 1
    print(f"{args.model} now served by version {version}")
    return 0
