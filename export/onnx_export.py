"""Export a run directory to a contract .onnx: dynamic batch, metadata, checker, parity."""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch

from handlers.contract import CONTRACT_VERSION, RESIZE_INTERPOLATION, load_model
from models import AggregatedClassifier
from models.export_wrapper import ContractModel
from rundir import RunDirectory

OPSET = 17
METRIC_KEYS = ("closed_acc", "auroc", "oscr", "known_accept_rate", "unknown_reject_rate",
               "dataset", "known_classes", "unknown_classes", "train_seconds")


class ExportError(Exception):
    """Export could not produce a correct file; the message says why."""


def load_run(run_dir: Path, aggregated: bool = False,
             head_score: bool = False) -> tuple[ContractModel, dict, dict]:
    """(contract module in eval mode, checkpoint dict, metrics) from a training run directory.

    `aggregated` exports an SLA run's M-pass aggregated inference (SLA+AG) instead of its
    single-pass distilled head; checkpoint and metrics then carry SLA+AG's threshold and figures.
    `head_score` leaves the post-hoc detector out: the head's own score decides, with its own
    validation-calibrated threshold (no feature bank in the file).
    """
    directory = RunDirectory(run_dir)
    classifier, saved = directory.load_classifier()
    metrics = directory.read_metrics()
    checkpoint = saved.to_dict()
    if head_score:
        classifier, checkpoint, metrics = without_detector(run_dir, classifier, checkpoint, metrics)
    if not aggregated:
        return ContractModel(classifier).eval(), checkpoint, metrics
    transform = checkpoint["model_spec"].get("sla_transform", "none")
    if transform == "none" or checkpoint.get("aggregated_threshold") is None:
        raise ExportError(f"{run_dir}: --sla-aggregate needs a run trained with --method sla")
    ag = metrics["aggregated"]
    classifier.detector = None  # SLA+AG serves a score of the aggregated logits
    wrapped = AggregatedClassifier(classifier, transform, ag["score"])
    checkpoint = dict(checkpoint, threshold=checkpoint["aggregated_threshold"],
                      method=f"{checkpoint['method']}+ag", temperature=1.0,
                      model_spec=dict(checkpoint["model_spec"], score=ag["score"], detector="none"))
    return ContractModel(wrapped).eval(), checkpoint, {**metrics, **ag}


def without_detector(run_dir: Path, classifier: torch.nn.Module, checkpoint: dict,
                     metrics: dict) -> tuple[torch.nn.Module, dict, dict]:
    """The run's classifier serving its head's own score, with that score's threshold/figures."""
    spec = checkpoint["model_spec"]
    if spec.get("detector", "none") == "none":
        return classifier, checkpoint, metrics
    if checkpoint.get("head_threshold") is None or "head" not in metrics:
        raise ExportError(f"{run_dir}: --head-score needs a run that calibrated its head score "
                          "(re-run training)")
    classifier.detector = None
    head = dict(metrics["scores"][spec["score"]], **metrics["head"])  # auroc, oscr, rates
    head.pop("threshold")
    return classifier, dict(checkpoint, threshold=checkpoint["head_threshold"],
                            model_spec=dict(spec, detector="none")), dict(metrics, **head)


def score_selection(spec: dict, has_reciprocal_score: bool) -> dict:
    """Which score decides `known` (unknown_score), its settings, and how it was chosen."""
    detector = spec.get("detector", "none")
    served = spec["score"] if detector == "none" else detector
    selection = {"unknown_score": served, "head_score": spec["score"],
                 "chosen_by": "the training run's --detector (none: the head's --score); the "
                              "project default (knn) is the detector with the highest mean AUROC "
                              "over the mnist5k protocol, 5 splits x 2 training seeds (README)"}
    if detector in ("knn", "fusion"):
        selection.update(knn_k=spec["knn_k"], bank_size=spec["bank_size"],
                         bank="L2-normalised known-class training embeddings, seeded subsample")
    if has_reciprocal_score:
        selection["reciprocal_score"] = (f"the reciprocal-point head's own score ({spec['score']}; "
                                         "mls = -max_k l_k), served next to unknown_score")
    return selection


def metadata(checkpoint: dict, metrics: dict, model_version: str, source: str,
             output_names: list[str]) -> dict[str, str]:
    """The contract's metadata_props, every value a JSON string."""
    spec = checkpoint["model_spec"]
    selection = score_selection(spec, "reciprocal_score" in output_names)
    input_spec = {"channels": checkpoint["input_shape"][0], "height": checkpoint["input_shape"][1],
                  "width": checkpoint["input_shape"][2], "layout": "NCHW", "dtype": "float32",
                  "range": [0.0, 1.0], "normalisation": "inside the graph"}
    if checkpoint.get("resize_policy") is not None:  # runs before the field: no policy recorded
        input_spec["resize"] = {"policy": checkpoint["resize_policy"],
                                "interpolation": RESIZE_INTERPOLATION}
    values = {
        "contract_version": CONTRACT_VERSION,
        "class_names": checkpoint["class_names"],
        "input_spec": input_spec,
        "method": checkpoint["method"],
        "score": selection["unknown_score"],
        "score_selection": selection,
        "threshold": {"value": checkpoint["threshold"], "rule": checkpoint["threshold_rule"],
                      "decision": "known iff unknown_score <= value"},
        "metrics": {key: metrics[key] for key in METRIC_KEYS if key in metrics},
        "model_version": model_version,
        "model_spec": spec,
        "temperature": checkpoint.get("temperature", 1.0),  # probabilities = softmax(logits / T)
        "source_run": source,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return {key: json.dumps(value) for key, value in values.items()}


def parity(model: ContractModel, onnx_path: Path, channels: int, height: int, width: int,
           batch_sizes: tuple[int, ...] = (1, 32), tolerance: float = 1e-4) -> dict[str, float]:
    """Max |onnxruntime - PyTorch| per output over the batch sizes; ExportError above tolerance."""
    session, info = load_model(onnx_path, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = {name: 0.0 for name in info.output_names}
    for batch in batch_sizes:
        images = torch.rand(batch, channels, height, width, generator=generator)
        with torch.no_grad():
            expected = model(images)
        got = session.run(list(info.output_names), {"images": images.numpy()})
        for name, ours, theirs in zip(info.output_names, got, expected):
            worst[name] = max(worst[name], float(np.abs(ours - theirs.numpy()).max()))
    bad = {name: diff for name, diff in worst.items() if not diff <= tolerance}
    if bad:
        raise ExportError(f"ONNX and PyTorch disagree beyond {tolerance:g}: {bad}")
    return worst


def export_onnx(run_dir: str | Path, out: str | Path, model_version: str = "1",
                batch_sizes: tuple[int, ...] = (1, 32), tolerance: float = 1e-4,
                aggregated: bool = False, head_score: bool = False) -> dict:
    """Export, check with onnx.checker, prove parity; write `out` only when all of it passed."""
    run_dir, out = Path(run_dir), Path(out)
    model, checkpoint, metrics = load_run(run_dir, aggregated, head_score)
    channels, height, width = checkpoint["input_shape"]
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        dynamic = {name: {0: "batch"} for name in ["images", *model.output_names]}
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export, which needs
            # onnxscript (not installed); this one is exact for these static conv graphs and
            # the parity check below proves every export anyway.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (torch.rand(2, channels, height, width),), str(tmp),
                              input_names=["images"], output_names=model.output_names,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        model.eval()  # export restores the wrapper's mode; keep BatchNorm in inference mode
        proto = onnx.load(str(tmp))
        for key, value in metadata(checkpoint, metrics, model_version, str(run_dir),
                                       model.output_names).items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))  # one file: the weights stay inside (no external data)
        worst = parity(model, tmp, channels, height, width, batch_sizes, tolerance)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"onnx": str(out), "bytes": out.stat().st_size, "outputs": model.output_names,
            "parity_max_abs_diff": worst, "parity_batches": list(batch_sizes), "opset": OPSET}
