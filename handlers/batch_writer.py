"""The batch scorer's output: one row per image, CSV or JSONL by the file name's suffix.

A row is made from an answer of the REST contract (DESIGN.md) - `Predictor.answers` locally,
the server's JSON remotely - so both modes write the same decision. CSV cells: `known` is
True/False, `top_k` is `label:probability;...` (6 decimals), and a missing value (an image's
error, `reciprocal_score` of a softmax model) is an empty cell; JSONL keeps the types, `top_k`
as [[label, probability], ...] and a missing value as null.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from handlers.batch_sources import BatchScoreError

COLUMNS = ("id", "label", "known", "unknown_score", "reciprocal_score", "predicted_class",
           "class_index", "top_k", "error")


def answer_values(answer: dict | None) -> tuple:
    """The values of COLUMNS[1:-1] for an answer; all None without one."""
    if answer is None:
        return (None,) * 7
    return (answer["label"], answer["known"], answer["unknown_score"],
            answer.get("reciprocal_score"), answer["predicted_class"], answer["class_index"],
            [(p["label"], p["probability"]) for p in answer["probabilities"]])


class RowWriter:
    """Writes the rows to `path` (.csv or .jsonl); every column is present in every row."""

    def __init__(self, path: Path):
        if path.suffix not in (".csv", ".jsonl"):
            raise BatchScoreError(f"--out {path}: use a .csv or .jsonl file name")
        self.jsonl = path.suffix == ".jsonl"
        self.file = open(path, "w", newline="")
        self.csv = None if self.jsonl else csv.writer(self.file)
        if self.csv:
            self.csv.writerow(COLUMNS)

    def write(self, image_id: str, answer: dict | None, error: str | None) -> None:
        """One image's row: its answer, or None with the error that kept it from one."""
        *values, top = answer_values(answer)
        if self.jsonl:
            row = (image_id, *values, top, error or "")
            self.file.write(json.dumps(dict(zip(COLUMNS, row))) + "\n")
        else:
            cell = "" if top is None else ";".join(f"{label}:{p:.6f}" for label, p in top)
            self.csv.writerow((image_id, *values, cell, error or ""))  # None -> empty cell

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
