"""`python -m export.archive model.onnx --name NAME --version V --store model_store/`.

Builds a TorchServe .mar with torch-model-archiver: the contract .onnx, the handler module,
the framework-free `handlers` package it imports, and a model-config.yaml carrying the
handler's settings (onnxruntime threads, top-k). Refuses a file that breaks the contract, so
a bad model never reaches the model store.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from cli_errors import OneLineErrorParser
from handlers.contract import ModelFileError, load_model

HANDLERS = Path(__file__).resolve().parents[1] / "handlers"
SERVING_MODULES = ("__init__.py", "contract.py", "decode.py", "predictor.py", "resize.py")


class ArchiveError(Exception):
    """The archive could not be built; the message says why."""


def build_archive(model: str | Path, name: str, version: str, store: str | Path,
                  ort_threads: int = 1, top_k: int = 3) -> Path:
    """Check the model against the contract, then write STORE/NAME.mar (replacing it)."""
    model, store = Path(model), Path(store)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ArchiveError(f"--name {name!r}: use letters, digits, '_' and '-' only")
    load_model(model, providers=["CPUExecutionProvider"])  # ModelFileError names the problem
    archiver = Path(sys.executable).parent / "torch-model-archiver"
    if not archiver.exists():
        raise ArchiveError("torch-model-archiver is not installed in this environment")
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "extra"
        (stage / "handlers").mkdir(parents=True)
        for module in SERVING_MODULES:  # copied as a package: `from handlers... import` works
            shutil.copy2(HANDLERS / module, stage / "handlers" / module)
        config = Path(tmp) / "model-config.yaml"
        config.write_text(yaml.safe_dump({"handler": {"ort_threads": ort_threads, "top_k": top_k}}))
        command = [str(archiver), "--model-name", name, "--version", version,
                   "--serialized-file", str(model), "--handler",
                   str(HANDLERS / "torchserve_handler.py"), "--extra-files", str(stage),
                   "--config-file", str(config), "--export-path", str(store), "--force"]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ArchiveError(f"torch-model-archiver failed: {result.stderr.strip()[-500:]}")
    return store / f"{name}.mar"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m export.archive", description=__doc__)
    parser.add_argument("model", help="a contract .onnx written by `python -m export`")
    parser.add_argument("--name", required=True, help="model name in the REST path")
    parser.add_argument("--version", default="1")
    parser.add_argument("--store", default="model_store")
    parser.add_argument("--ort-threads", type=int, default=1,
                        help="onnxruntime threads per worker (workers x threads = cores)")
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        if args.ort_threads < 1 or args.top_k < 1:
            raise ArchiveError("--ort-threads and --top-k must be >= 1")
        path = build_archive(args.model, args.name, args.version, args.store,
                             args.ort_threads, args.top_k)
    except (ArchiveError, ModelFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
