"""A TorchServe of a load script's own: its config and what it writes to disk.

The drills, the soak and the logging comparison each start one (TMPDIR-isolated working
directory, the repo's config.properties moved to ports 18080-18082, one model from a store of
their own), so that what they measure is theirs alone.
"""
from __future__ import annotations

import json
from pathlib import Path

from handlers.server import read_properties, write_config

ROOT = Path(__file__).resolve().parents[1]


def own_server_config(workdir: Path, store: Path, model: str, port_offset: int = 10000) -> Path:
    """The repo's config.properties serving only `model` from `store` with the repo's
    batching and workers, its three ports moved up `port_offset`."""
    repo = ROOT / "config.properties"
    [(version, settings)] = next(iter(json.loads(read_properties(repo)["models"]).values())).items()
    settings = {**settings, "marName": f"{model}.mar"}
    return write_config(repo, workdir / "config.properties",
                        {"model_store": str(store), "load_models": f"{model}={model}.mar",
                         "models": json.dumps({model: {version: settings}})}, port_offset=port_offset)


def directory_bytes(path: Path) -> int:
    """Bytes of every file under `path` (rolled log parts included)."""
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
