"""Load a contract .onnx file and check it is one, before anything is served from it.

The contract (DESIGN.md): input `images` float32 [batch, C, H, W] in [0, 1]; outputs, in this
order, `logits` [batch, K], `unknown_score` [batch] (the score that decides `known`, possibly
from a post-hoc detector inside the graph), and for reciprocal-point models
`reciprocal_score` [batch] (the reciprocal-distance score, served next to the deciding one) and
`distances` [batch, K]; metadata_props with the class names, input spec, method, the deciding
`score`'s name, calibrated threshold, metrics and version (optionally `score_selection`: how
the deciding score was chosen), as JSON strings. input_spec may carry
`"resize": {"policy": "center-crop" | "letterbox", "interpolation": "bilinear"}`: how training
resized its images (handlers/resize.py), which the decoder then applies to encoded images of
any size; files without it (exported before policies were recorded) resize only images of the
model's aspect ratio. A file that breaks any of this is refused with a message that names the
problem.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from handlers.resize import POLICIES

CONTRACT_VERSION = "1"
REQUIRED_METADATA = ("contract_version", "class_names", "input_spec", "method", "score",
                     "threshold", "metrics", "model_version")
OPTIONAL_METADATA = ("temperature", "model_spec", "source_run", "exported_at", "quantization",
                     "score_selection")
RESIZE_INTERPOLATION = "bilinear"  # the one handlers/resize.py implements
# output name -> rank, in contract order; the first two are required
OUTPUT_RANKS = {"logits": 2, "unknown_score": 1, "reciprocal_score": 1, "distances": 2}


class ModelFileError(ValueError):
    """The file is not a servable contract model; the message says why."""


@dataclass(frozen=True)
class ModelInfo:
    class_names: tuple[str, ...]
    channels: int
    height: int
    width: int
    method: str
    score: str
    threshold: float
    threshold_rule: str
    metrics: dict
    model_version: str
    output_names: tuple[str, ...]
    temperature: float  # probabilities = softmax(logits / temperature), as in training
    score_selection: dict | str | None = None  # how the deciding `score` was chosen, if said
    resize_policy: str | None = None  # input_spec.resize.policy; None: same aspect ratio only


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build and machine have it, CPU always."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _metadata(session: ort.InferenceSession, path: Path) -> dict:
    raw = session.get_modelmeta().custom_metadata_map
    missing = [key for key in REQUIRED_METADATA if key not in raw]
    if len(missing) == len(REQUIRED_METADATA):
        raise ModelFileError(f"{path}: has no open-set metadata (metadata_props is missing "
                             f"{', '.join(REQUIRED_METADATA)}); export it with `python -m export`")
    if missing:
        raise ModelFileError(f"{path}: metadata is missing {', '.join(missing)}")
    parsed = {}
    for key in (*REQUIRED_METADATA, *[k for k in OPTIONAL_METADATA if k in raw]):
        try:
            parsed[key] = json.loads(raw[key])
        except json.JSONDecodeError:
            raise ModelFileError(f"{path}: metadata {key!r} is not valid JSON") from None
    if str(parsed["contract_version"]) != CONTRACT_VERSION:
        raise ModelFileError(f"{path}: contract version {parsed['contract_version']!r}, "
                             f"this server reads {CONTRACT_VERSION!r}")
    return parsed


def _check_io(session: ort.InferenceSession, meta: dict, path: Path) -> tuple[str, ...]:
    inputs = session.get_inputs()
    spec = meta["input_spec"]
    if not isinstance(spec, dict) or not isinstance(meta["class_names"], list):
        raise ModelFileError(f"{path}: metadata input_spec must be an object and class_names a list")
    if len(inputs) != 1 or inputs[0].name != "images" or inputs[0].type != "tensor(float)" \
            or len(inputs[0].shape) != 4:
        found = [(i.name, i.type, i.shape) for i in inputs]
        raise ModelFileError(f"{path}: expected one input 'images' float32 [batch, C, H, W], "
                             f"found {found}")
    if isinstance(inputs[0].shape[0], int):
        raise ModelFileError(f"{path}: the batch axis is fixed at {inputs[0].shape[0]}; "
                             "export with a dynamic batch axis")
    expected = [spec.get("channels"), spec.get("height"), spec.get("width")]
    declared = inputs[0].shape[1:]
    if any(isinstance(d, int) and d != e for d, e in zip(declared, expected)):
        raise ModelFileError(f"{path}: input shape {inputs[0].shape} disagrees with "
                             f"input_spec {spec}")
    outputs = {o.name: o for o in session.get_outputs()}
    for name in ("logits", "unknown_score"):
        if name not in outputs:
            raise ModelFileError(f"{path}: output {name!r} missing (found {sorted(outputs)})")
    for name, output in outputs.items():
        rank = OUTPUT_RANKS.get(name)
        if rank and (len(output.shape) != rank or output.type != "tensor(float)"):
            raise ModelFileError(f"{path}: output {name!r} is {output.type} {output.shape}, "
                                 f"expected float32 of rank {rank}")
    num_classes = outputs["logits"].shape[1]
    if isinstance(num_classes, int) and num_classes != len(meta["class_names"]):
        raise ModelFileError(f"{path}: logits have {num_classes} classes but metadata names "
                             f"{len(meta['class_names'])}")
    return tuple(name for name in OUTPUT_RANKS if name in outputs)


def _resize_policy(spec: dict, path: Path) -> str | None:
    """input_spec.resize.policy, checked; None for files exported before policies were recorded."""
    if "resize" not in spec:
        return None
    resize = spec["resize"]
    if not isinstance(resize, dict) or "policy" not in resize:
        raise ModelFileError(f"{path}: metadata input_spec.resize must be an object with a "
                             f"\"policy\", got {json.dumps(resize)}")
    if resize["policy"] not in POLICIES:
        raise ModelFileError(f"{path}: unknown resize policy {json.dumps(resize['policy'])} in "
                             f"input_spec.resize; this server knows {', '.join(POLICIES)}")
    interpolation = resize.get("interpolation", RESIZE_INTERPOLATION)
    if interpolation != RESIZE_INTERPOLATION:
        raise ModelFileError(f"{path}: resize interpolation {json.dumps(interpolation)} in "
                             f"input_spec.resize; this server resizes {RESIZE_INTERPOLATION} only")
    return resize["policy"]


def load_model(path: str | Path, providers: list[str] | None = None,
               threads: int | None = None) -> tuple[ort.InferenceSession, ModelInfo]:
    """An onnxruntime session and the model's metadata, or ModelFileError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=providers or default_providers())
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for bad files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: not a loadable ONNX model ({first_line})") from None
    meta = _metadata(session, path)
    output_names = _check_io(session, meta, path)
    spec, threshold = meta["input_spec"], meta["threshold"]
    try:
        if not isinstance(threshold, dict):
            raise TypeError("threshold must be an object with a value")
        info = ModelInfo(
            class_names=tuple(str(n) for n in meta["class_names"]),
            channels=int(spec["channels"]), height=int(spec["height"]), width=int(spec["width"]),
            method=str(meta["method"]), score=str(meta["score"]),
            threshold=float(threshold["value"]), threshold_rule=str(threshold.get("rule", "")),
            metrics=dict(meta["metrics"]), model_version=str(meta["model_version"]),
            output_names=output_names,
            temperature=float(meta.get("temperature", 1.0)),
            score_selection=meta.get("score_selection"),
            resize_policy=_resize_policy(spec, path),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path}: malformed metadata ({type(exc).__name__}: {exc})") from None
    if info.score_selection is not None and not isinstance(info.score_selection, (dict, str)):
        raise ModelFileError(f"{path}: metadata score_selection must be a JSON object or string, "
                             f"got {type(info.score_selection).__name__}")
    if not math.isfinite(info.threshold):
        raise ModelFileError(f"{path}: threshold {info.threshold} is not a finite number")
    if not (math.isfinite(info.temperature) and info.temperature > 0):
        raise ModelFileError(f"{path}: temperature must be finite and > 0, got {info.temperature}")
    if min(info.channels, info.height, info.width) < 1:
        raise ModelFileError(f"{path}: input_spec sizes must be positive")
    return session, info
