"""Framework-free open-set predictor (numpy + onnxruntime + Pillow): requests in, answers out.

The TorchServe handler and the batch scorer are thin adapters over `Predictor`.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from handlers.contract import load_model
from handlers.decode import DecodedImage, InputError, Shape, decode_request, parse_threshold


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class Predictor:
    """Loads a contract .onnx (refusing a bad one) and answers decoded requests in batches."""

    def __init__(self, model_path: str | Path, name: str | None = None, threads: int | None = None,
                 providers: list[str] | None = None, top_k: int = 3):
        self.session, self.info = load_model(model_path, providers, threads)
        self.shape = Shape(self.info.channels, self.info.height, self.info.width)
        self.name = name or Path(model_path).stem
        self.top_k = max(1, min(top_k, len(self.info.class_names)))

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images N x C x H x W float32 in [0, 1] -> (logits N x K, unknown_score N)."""
        logits, scores = self.session.run(["logits", "unknown_score"], {"images": images})
        return logits, scores

    def top_classes(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class indices, probabilities) of the top-k classes, each N x k, best first."""
        probabilities = softmax(logits / self.info.temperature)  # N x K
        top = np.argsort(-probabilities, axis=1)[:, :self.top_k]
        return top, np.take_along_axis(probabilities, top, axis=1)

    def answers(self, logits: np.ndarray, scores: np.ndarray,
                thresholds: list[float | None] | None = None) -> list[dict]:
        """Per-image responses (DESIGN.md REST contract), vectorised over the batch."""
        top, top_p = self.top_classes(logits)
        names, model = self.info.class_names, {"name": self.name, "version": self.info.model_version,
                                               "method": self.info.method}
        rows = []
        for i in range(len(scores)):
            threshold = self.info.threshold if not thresholds or thresholds[i] is None \
                else thresholds[i]
            known = bool(scores[i] <= threshold)
            best = int(top[i, 0])
            rows.append({
                "label": names[best] if known else "unknown",
                "known": known,
                "predicted_class": names[best],
                "class_index": best,
                "unknown_score": float(scores[i]),
                "threshold": float(threshold),
                "probabilities": [{"label": names[int(k)], "probability": float(p)}
                                  for k, p in zip(top[i], top_p[i])],
                "model": model,
            })
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
            logits, scores = self.run(np.stack([image.pixels for image in images]))
            rows = self.answers(logits, scores, [image.threshold for image in images])
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
