"""Static int8 quantization with onnxruntime, checked against fp32 on the run's own test split
(the indices the run saved in split.npz).

Only Conv / Gemm / MatMul are quantized (QDQ, per-channel int8 weights, uint8 activations,
calibrated on the run's training images); the reciprocal-point distances and scores stay in
float, so the unknown score is not computed from 8-bit differences of large squared norms.
Post-hoc detector nodes (exported from the `detector` submodule, node names containing
"/detector/", e.g. the k-NN MatMul against the feature bank before TopK) stay float too: a
k-th-nearest cosine similarity is a small difference between values close to 1.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from sklearn.metrics import roc_auc_score

from handlers.contract import load_model


# values per onnxruntime call of the int8 check: evaluation batches of 256 images up to 8,192
# values each (the largest RGB square under it is 3 x 52 x 52), 27 at 3 x 160 x 160. On a 160 px
# folder run, evaluating 256 images per call put the peak of `export --int8` at 2.1 GB, 27 at 1.3.
BATCH_VALUES = 2**21


def batch_size_for(values: int, most: int) -> int:
    """Images per onnxruntime call for images of `values` values each: `most`, fewer for large
    inputs (activation memory grows with the batch's pixels)."""
    return max(8, min(most, BATCH_VALUES // values))

DETECTOR_SCOPE = "/detector/"  # torch.onnx names nodes by module path: /classifier/detector/...


class _Batches(CalibrationDataReader):
    def __init__(self, images: np.ndarray):
        # the ranges are min/max over batches: the batch size does not change them
        batch_size = batch_size_for(int(np.prod(images.shape[1:])), most=64)
        self._batches = iter([{"images": images[i:i + batch_size]}
                              for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


def evaluate(path: Path, split: dict, batch_size: int | None = None) -> dict[str, float]:
    """Closed-set accuracy and AUROC (unknown = positive) of one .onnx on the run's test split
    (rundir.RunDirectory.split_images), `batch_size` images per call (default: 256, fewer for
    large inputs: onnxruntime's activation memory grows with the batch's pixels)."""
    session, info = load_model(path, providers=["CPUExecutionProvider"])
    if batch_size is None:
        batch_size = batch_size_for(info.channels * info.height * info.width, most=256)

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [session.run(["logits", "unknown_score"], {"images": images[i:i + batch_size]})
                 for i in range(0, len(images), batch_size)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    known_logits, known_scores = run(split["test_known"])
    _, unknown_scores = run(split["test_unknown"])
    is_unknown = np.r_[np.zeros(len(known_scores)), np.ones(len(unknown_scores))]
    return {"closed_acc": float((known_logits.argmax(1) == split["test_labels"]).mean()),
            "auroc": float(roc_auc_score(is_unknown, np.r_[known_scores, unknown_scores]))}


def detector_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes exported from a post-hoc detector (kept in float)."""
    return [node.name for node in model.graph.node if DETECTOR_SCOPE in node.name]


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray) -> None:
    """QDQ static quantization of Conv/Gemm/MatMul outside the detector; the contract metadata
    is carried over."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        excluded = detector_nodes(onnx.load(str(prepared)))  # names as pre-processing left them
        quantize_static(str(prepared), str(int8_path), _Batches(calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                        nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax)
        # Not CalibMaxIntermediateOutputs: in onnxruntime 1.32 it drops the collected batches'
        # min/max outputs instead of merging them (MinMaxCalibrater.collect_data), so only the
        # last batches would set the ranges ("No data is collected" when none are left).
    source = onnx.load(str(fp32_path))
    quantized = onnx.load(str(int8_path))
    del quantized.metadata_props[:]
    for prop in source.metadata_props:
        quantized.metadata_props.add(key=prop.key, value=prop.value)
    quantized.metadata_props.add(key="quantization", value=json.dumps(
        {"type": "static int8 QDQ", "ops": ["Conv", "Gemm", "MatMul"],
         "float_nodes": excluded, "calibration_images": int(len(calibration))}))
    onnx.save(quantized, str(int8_path))
