"""Framework-free open-set predictor (numpy + onnxruntime + Pillow): requests in, answers out.

The TorchServe handler and the batch scorer are thin adapters over `Predictor`; the known /
unknown decision is made here (`Predictor.decide`) and nowhere else.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from handlers.contract import load_model
from handlers.decode import DecodedImage, InputError, Shape, decode_request, parse_threshold


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class Outputs(NamedTuple):
    """One batch's contract outputs: logits N x K, unknown_score N (decides `known`) and, for
    reciprocal-point models, reciprocal_score N (None for models without it)."""
    logits: np.ndarray
    unknown_score: np.ndarray
    reciprocal_score: np.ndarray | None


class Predictor:
    """Loads a contract .onnx (refusing a bad one) and answers decoded requests in batches."""

    def __init__(self, model_path: str | Path, name: str | None = None, threads: int | None = None,
                 providers: list[str] | None = None, top_k: int = 3, version: str | None = None):
        """`version`: what answers report as model.version (a server's version of the model);
        default the .onnx's own model_version."""
        self.session, self.info = load_model(model_path, providers, threads)
        self.shape = Shape(self.info.channels, self.info.height, self.info.width,
                           self.info.resize_policy)
        self.name = name or Path(model_path).stem
        self.version = version or self.info.model_version
        self.top_k = max(1, min(top_k, len(self.info.class_names)))
        self.has_reciprocal = "reciprocal_score" in self.info.output_names
        self._fetch = ["logits", "unknown_score"] + (["reciprocal_score"] if self.has_reciprocal
                                                     else [])

    def run(self, images: np.ndarray) -> Outputs:
        """images N x C x H x W float32 in [0, 1] -> the contract outputs the answers use."""
        fetched = self.session.run(self._fetch, {"images": images})
        return Outputs(fetched[0], fetched[1], fetched[2] if self.has_reciprocal else None)

    def top_classes(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class indices, probabilities) of the top-k classes, each N x k, best first."""
        probabilities = softmax(logits / self.info.temperature)  # N x K
        top = np.argsort(-probabilities, axis=1)[:, :self.top_k]
        return top, np.take_along_axis(probabilities, top, axis=1)

    def decide(self, unknown_score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        """known = unknown_score <= threshold, per image (N): the one open-set decision that the
        server and the batch scorer answer with. Compared at the score's own precision (float32);
        a threshold beyond that range saturates instead of overflowing."""
        limit = np.finfo(unknown_score.dtype).max
        return unknown_score <= np.clip(thresholds, -limit, limit).astype(unknown_score.dtype)

    def answers(self, outputs: Outputs, thresholds: list[float | None] | None = None) -> list[dict]:
        """Per-image responses (DESIGN.md REST contract), vectorised over the batch; a threshold
        of None is the calibrated one. `reciprocal_score` is there only for models that have it
        (reciprocal-point heads)."""
        top, top_p = self.top_classes(outputs.logits)
        names = self.info.class_names
        model = {"name": self.name, "version": self.version,
                 "method": self.info.method, "score": self.info.score}
        scores = outputs.unknown_score.tolist()
        reciprocal = None if outputs.reciprocal_score is None else outputs.reciprocal_score.tolist()
        threshold = [self.info.threshold if t is None else float(t)
                     for t in (thresholds or [None] * len(scores))]
        known = self.decide(outputs.unknown_score, np.array(threshold, np.float64)).tolist()
        rows = []
        for i, (classes, probabilities) in enumerate(zip(top.tolist(), top_p.tolist())):
            best = classes[0]
            row = {
                "label": names[best] if known[i] else "unknown",
                "known": known[i],
                "predicted_class": names[best],
                "class_index": best,
                "unknown_score": scores[i],
            }
            if reciprocal is not None:
                row["reciprocal_score"] = reciprocal[i]
            row.update(threshold=threshold[i],
                       probabilities=[{"label": names[k], "probability": p}
                                      for k, p in zip(classes, probabilities)],
                       model=model)
            rows.append(row)
        return rows

    def decode(self, body: object, threshold: object = None) -> tuple[list[DecodedImage], bool]:
        return decode_request(body, self.shape, parse_threshold(threshold))

    def predict_requests(self, requests: list[tuple[object, object]],
                         timings: dict[str, float] | None = None) -> list[dict | list | InputError]:
        """[(body, threshold override)] -> per request: an answer, a list of answers, or the
        InputError that request caused. All valid images of all requests run as one batch.
        `timings`, if given, receives decode_s and inference_s."""
        started = time.perf_counter()
        decoded: list[tuple[list[DecodedImage], bool] | InputError] = []
        for body, threshold in requests:
            try:
                decoded.append(self.decode(body, threshold))
            except InputError as error:
                decoded.append(error)
        images = [image for item in decoded if not isinstance(item, InputError) for image in item[0]]
        decoded_at = time.perf_counter()
        if images:
            outputs = self.run(np.stack([image.pixels for image in images]))
            rows = self.answers(outputs, [image.threshold for image in images])
        answers: list[dict | list | InputError] = []
        cursor = 0
        for item in decoded:
            if isinstance(item, InputError):
                answers.append(item)
                continue
            batch, is_list = item
            answers.append(rows[cursor:cursor + len(batch)] if is_list else rows[cursor])
            cursor += len(batch)
        if timings is not None:
            timings.update(decode_s=decoded_at - started, inference_s=time.perf_counter() - decoded_at)
        return answers
