"""Framework-free open-set predictor (numpy + onnxruntime + Pillow): requests in, answers out.

The TorchServe handler and the batch scorer are thin adapters over `Predictor`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from handlers.contract import load_model
from handlers.decode import DecodedImage, InputError, Shape, decode_request


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

    def answer(self, logits: np.ndarray, score: float, threshold: float | None) -> dict:
        """One image's response (DESIGN.md REST contract)."""
        threshold = self.info.threshold if threshold is None else threshold
        probabilities = softmax(logits[None] / self.info.temperature)[0]
        order = np.argsort(-probabilities)[:self.top_k]
        best = int(order[0])
        known = bool(score <= threshold)
        return {
            "label": self.info.class_names[best] if known else "unknown",
            "known": known,
            "predicted_class": self.info.class_names[best],
            "class_index": best,
            "unknown_score": float(score),
            "threshold": float(threshold),
            "probabilities": [{"label": self.info.class_names[int(i)],
                               "probability": float(probabilities[i])} for i in order],
            "model": {"name": self.name, "version": self.info.model_version,
                      "method": self.info.method},
        }

    def decode(self, body: object, threshold: object = None) -> tuple[list[DecodedImage], bool]:
        from handlers.decode import parse_threshold

        return decode_request(body, self.shape, parse_threshold(threshold))

    def predict_requests(self, requests: list[tuple[object, object]]) -> list[dict | list | InputError]:
        """[(body, threshold query value)] -> per request: an answer, a list of answers, or the
        InputError that request caused. All valid images of all requests run as one batch."""
        decoded: list[tuple[list[DecodedImage], bool] | InputError] = []
        for body, threshold in requests:
            try:
                decoded.append(self.decode(body, threshold))
            except InputError as error:
                decoded.append(error)
        images = [image for item in decoded if not isinstance(item, InputError) for image in item[0]]
        if images:
            logits, scores = self.run(np.stack([image.pixels for image in images]))
        answers: list[dict | list | InputError] = []
        cursor = 0
        for item in decoded:
            if isinstance(item, InputError):
                answers.append(item)
                continue
            batch, is_list = item
            rows = [self.answer(logits[cursor + i], scores[cursor + i], image.threshold)
                    for i, image in enumerate(batch)]
            cursor += len(batch)
            answers.append(rows if is_list else rows[0])
        return answers
