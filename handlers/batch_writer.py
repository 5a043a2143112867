"""The batch scorer's output: one row per image, CSV, JSONL or Parquet by the file's suffix.

A row is made from an answer of the REST contract (DESIGN.md) - `Predictor.answers` locally,
the server's JSON remotely - so both modes write the same decision. CSV cells: `known` is
True/False, `top_k` is `label:probability;...` (6 decimals), and a missing value (an image's
error, `reciprocal_score` of a softmax model) is an empty cell; JSONL keeps the types, `top_k`
as [[label, probability], ...] and a missing value as null; Parquet (for large outputs) keeps
the types too, `top_k` as a list of {label, probability}.
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


class ParquetRows:
    """Rows into a Parquet file, a row group per `group` rows (the JSONL types; `top_k` a list
    of {label, probability}). Needs pyarrow (it comes with the `ray` extra)."""

    def __init__(self, path: Path, group: int = 65536):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise BatchScoreError(f"--out {path}: Parquet needs pyarrow (pip install pyarrow)") from None
        top = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))
        self.schema = pa.schema([("id", pa.string()), ("label", pa.string()), ("known", pa.bool_()),
                                 ("unknown_score", pa.float64()), ("reciprocal_score", pa.float64()),
                                 ("predicted_class", pa.string()), ("class_index", pa.int64()),
                                 ("top_k", top), ("error", pa.string())])
        self.pa, self.writer = pa, pq.ParquetWriter(str(path), self.schema)
        self.rows: list[tuple] = []
        self.group = group
        self.closed = False

    def append(self, row: tuple) -> None:
        *head, top, error = row
        top = None if top is None else [{"label": label, "probability": p} for label, p in top]
        self.rows.append((*head, top, error))
        if len(self.rows) >= self.group:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            columns = list(zip(*self.rows))
            self.writer.write_table(self.pa.table(columns, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.writer.close()
            self.closed = True


class RowWriter:
    """Writes the rows to `path` (.csv, .jsonl or .parquet); every column is in every row."""

    def __init__(self, path: Path):
        if path.suffix not in (".csv", ".jsonl", ".parquet"):
            raise BatchScoreError(f"--out {path}: use a .csv, .jsonl or .parquet file name")
        self.jsonl = path.suffix == ".jsonl"
        self.parquet = ParquetRows(path) if path.suffix == ".parquet" else None
        self.file = None if self.parquet else open(path, "w", newline="")
        self.csv = csv.writer(self.file) if path.suffix == ".csv" else None
        if self.csv:
            self.csv.writerow(COLUMNS)

    def write(self, image_id: str, answer: dict | None, error: str | None) -> None:
        """One image's row: its answer, or None with the error that kept it from one."""
        *values, top = answer_values(answer)
        if self.parquet:
            self.parquet.append((image_id, *values, top, error or ""))
        elif self.jsonl:
            row = (image_id, *values, top, error or "")
            self.file.write(json.dumps(dict(zip(COLUMNS, row))) + "\n")
        else:
            cell = "" if top is None else ";".join(f"{label}:{p:.6f}" for label, p in top)
            self.csv.writerow((image_id, *values, cell, error or ""))  # None -> empty cell

    def close(self) -> None:
        if self.parquet:
            self.parquet.close()
        else:
            self.file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
