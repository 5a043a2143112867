"""The bucket layout KServe's TorchServe runtime serves, for one contract .onnx.

    python -m deploy.torchserve_layout MODEL.onnx --out DIR [--name opensetmnist] [--ort-threads 2]

writes DIR/model-store/NAME.mar (export.archive.build_archive, the archive `make serve` uses) and
DIR/config/config.properties. Upload DIR to the prefix that storageUri names in
deploy/k8s/openset-torchserve.yaml: KServe downloads it to /mnt/models and runs
`torchserve --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`
with its KServe wrapper in front (port 8080, forwarding to TorchServe's inference port 8085).
The properties are KServe's documented keys plus the repo's config.properties worker settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from cli_errors import OneLineErrorParser, UserError
from export.archive import ArchiveError, build_archive
from handlers.contract import ModelFileError
from handlers.server import read_properties

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config.properties"
MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storageUri prefix
VERSION = "1"  # the archive's version, the key of the model in model_snapshot
# kept from the repo's config.properties as they are: what the local server does, the pod does
REPO_KEYS = ("default_workers_per_model", "metrics_mode", "model_metrics_auto_detect",
             "max_request_size")
NOTES = {
    "inference_address": "KServe's layout: TorchServe on 8085; the KServe wrapper holds 8080 and "
                         "forwards /v1/models/NAME:predict here.",
    "management_address": "Loopback only (KServe's sample puts it on 8085 with inference): nothing "
                          "outside the pod needs it, and tokens are off below.",
    "enable_envvars_config": "The runtime picks the request envelope through TS_SERVICE_ENVELOPE "
                             "(kserve for protocol v1).",
    "model_snapshot": "batchSize 1: TorchServe's kserve envelope answers only the first request of a "
                      "server batch, so a batch of 2+ fails with 503 (batch response mismatch). "
                      "Batch on the client instead: a JSON list of images in one instance's data.",
    "install_py_dep_per_model": "No pip at pod start: onnxruntime, Pillow, numpy and PyYAML must be in "
                                "the runtime image (deploy/README.md).",
    "enable_model_api": "Model registration OFF in the cluster (the repo turns it on for loopback "
                        "rollouts with a token; here tokens are off): KServe rolls out new "
                        "versions by replacing the InferenceService's storageUri.",
    "disable_token_authorization": "Token authorisation OFF, in the cluster only: KServe's wrapper "
                                   "calls TorchServe without a token. The cluster's ingress / mesh "
                                   "MUST authenticate callers (deploy/README.md); the management API "
                                   "stays on loopback with model registration off.",
}
HEADER = ("# TorchServe 0.12 configuration for KServe's TorchServe runtime, written by\n"
          "# `python -m deploy.torchserve_layout`: regenerate it rather than editing it.\n")


def model_settings(repo: dict[str, str], source: Path) -> dict:
    """The worker and batching settings of the one model in the repo's `models=` JSON."""
    try:
        versions = next(iter(json.loads(repo["models"]).values()))
        settings = next(iter(versions.values()))
        return {key: settings[key] for key in ("minWorkers", "maxWorkers", "batchSize",
                                               "maxBatchDelay", "responseTimeout")}
    except (KeyError, ValueError, StopIteration, AttributeError, TypeError):
        raise UserError(f"{source}: needs models={{NAME: {{VERSION: {{minWorkers, maxWorkers, "
                        "batchSize, maxBatchDelay, responseTimeout}}}}}} JSON") from None


def cluster_properties(name: str, repo: dict[str, str], settings: dict) -> dict[str, str]:
    """config.properties for the runtime, as key -> value (NOTES say why where it matters)."""
    model = {"defaultVersion": True, "marName": f"{name}.mar", **settings, "batchSize": 1}
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {name: {VERSION: model}}}
    missing = [key for key in REPO_KEYS if key not in repo]
    if missing:
        raise UserError(f"the repo's config.properties lacks {', '.join(missing)}")
    return {"inference_address": "http://0.0.0.0:8085",
            "management_address": "http://127.0.0.1:8081",
            "metrics_address": "http://0.0.0.0:8082",
            "enable_envvars_config": "true",
            "model_store": f"{MOUNT}/model-store",
            "model_snapshot": json.dumps(snapshot, separators=(",", ":")),
            "install_py_dep_per_model": "false",
            "enable_metrics_api": "true",
            **{key: repo[key] for key in REPO_KEYS},
            "enable_model_api": "false",
            "disable_token_authorization": "true"}


def render(properties: dict[str, str]) -> str:
    lines = [HEADER.rstrip("\n")]
    for key, value in properties.items():
        if key in NOTES:
            lines += textwrap.wrap(NOTES[key], width=98, initial_indent="# ", subsequent_indent="# ")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def write_layout(model: Path, out: Path, name: str, ort_threads: int,
                 config: Path = REPO_CONFIG) -> tuple[Path, Path]:
    """Write OUT/model-store/NAME.mar and OUT/config/config.properties; their paths."""
    if not model.is_file():
        raise UserError(f"{model}: no such model file")
    repo = read_properties(config)
    properties = render(cluster_properties(name, repo, model_settings(repo, config)))
    archive = build_archive(model, name, VERSION, out / "model-store", ort_threads=ort_threads)
    target = out / "config" / "config.properties"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(properties)
    return archive, target


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m deploy.torchserve_layout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a contract .onnx written by `python -m export`")
    parser.add_argument("--out", type=Path, required=True, help="folder to upload to the bucket")
    parser.add_argument("--name", default="opensetmnist", help="model name in the URLs")
    parser.add_argument("--ort-threads", type=int, default=2,
                        help="onnxruntime threads of the one worker (= the pod's CPUs)")
    args = parser.parse_args(argv)
    if args.ort_threads < 1:
        parser.error("--ort-threads must be at least 1")
    try:
        archive, properties = write_layout(args.model, args.out, args.name, args.ort_threads)
    except (UserError, ModelFileError, ArchiveError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {archive} and {properties}; upload {args.out}/ to the storageUri prefix")
    return 0


if __name__ == "__main__":
    sys.exit(main())
