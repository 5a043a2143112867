"""A training run directory: the one module that writes and reads its files.

    model.pt       Checkpoint: model spec, weights, class names, calibrated thresholds
    config.json    the resolved training configuration (train/config.py, nested sections)
    metrics.json   the run's evaluation
    split.npz      the open-set split: dataset indices of train / val / test_known / test_unknown
    skipped.txt    image files the dataset left out as unreadable (only when there were some)

Training writes it; export, the int8 check, the benchmark, M2m's generator run, RKD's teacher
and the tests read it through here. Imports models/ and data/, nothing from train/ or export/.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from cli_errors import UserError
from data.datasets import ImageSet, load_dataset
from data.image_files import DecodeOptions, parse_image_size
from handlers.resize import DEFAULT_POLICY
from data.splits import OpenSetSplit, open_set_split
from models import ModelSpec, OpenSetClassifier, build_classifier

SPLIT_PARTS = ("train", "val", "test_known", "test_unknown")


class RunDirError(UserError):
    """A run directory that is missing, incomplete or unreadable; the message names the file."""


@dataclass(frozen=True)
class Checkpoint:
    """model.pt: everything needed to rebuild, serve and threshold the classifier."""
    model_spec: dict
    state_dict: dict
    class_names: list[str]
    input_shape: list[int]  # C, H, W
    method: str
    threshold: float  # on the served unknown_score: known iff score <= threshold
    threshold_rule: str
    temperature: float = 1.0  # probabilities = softmax(logits / T)
    head_threshold: float | None = None  # on the head's own score (export --head-score)
    aggregated_threshold: float | None = None  # SLA+AG's (export --sla-aggregate)
    macs: int | None = None
    resize_policy: str | None = None  # handlers/resize.py; None: a run from before policies

    def classifier(self) -> OpenSetClassifier:
        """The network with these weights, in eval mode."""
        classifier = build_classifier(ModelSpec.from_dict(self.model_spec))
        classifier.load_state_dict(self.state_dict)
        return classifier.eval()

    def to_dict(self) -> dict:
        """The fields as saved (the weights themselves, not copies)."""
        return {item.name: getattr(self, item.name) for item in fields(self)}


REQUIRED = [item.name for item in fields(Checkpoint) if item.default is MISSING]


class ScaledPixels:
    """images[indices] as float32 in [0, 1], converted a slice at a time: the test split of a
    large folder run is never held as float32 (4x its uint8 size, or decoded all at once when
    its files stream). `np.asarray` gives the whole array."""

    def __init__(self, images, indices: np.ndarray):
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: slice) -> np.ndarray:
        return np.asarray(self.images[self.indices[item]], dtype=np.float32) / 255

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        pixels = self[:]
        return pixels if dtype is None else pixels.astype(dtype)


class RunDirectory:
    """Paths and readers/writers of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoint_path = self.path / "model.pt"
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.json"
        self.split_path = self.path / "split.npz"
        self.skipped_path = self.path / "skipped.txt"

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"{self.path}: cannot create directory ({exc.strerror})") from None

    def write(self, checkpoint: Checkpoint, config: dict, metrics: dict,
              split: OpenSetSplit | None = None) -> None:
        """All of a run's files (plots are the caller's)."""
        self.create()
        self.write_checkpoint(checkpoint)
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        self.write_metrics(metrics)
        if split is not None:
            np.savez(self.split_path, known_classes=np.array(split.known_classes),
                     **{part: getattr(split, part) for part in SPLIT_PARTS})

    def write_skipped(self, skipped: tuple[tuple[str, str], ...]) -> None:
        """One `file<TAB>why` line per unreadable image the dataset left out."""
        self.skipped_path.unlink(missing_ok=True)
        if skipped:
            self.skipped_path.write_text("".join(f"{file}\t{why}\n" for file, why in skipped))

    def write_checkpoint(self, checkpoint: Checkpoint) -> None:
        torch.save(checkpoint.to_dict(), self.checkpoint_path)

    def write_metrics(self, metrics: dict) -> None:
        self.metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")

    def _need(self, path: Path) -> None:
        if not path.is_file():
            raise RunDirError(f"{self.path}: not a run directory (no {path.name})")

    def read_checkpoint(self) -> Checkpoint:
        """model.pt, checked for every key a consumer relies on."""
        self._need(self.checkpoint_path)
        try:
            saved = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a bad input file
            raise RunDirError(f"{self.path}: cannot load model.pt ({type(exc).__name__})") from None
        missing = [key for key in REQUIRED if key not in saved] if isinstance(saved, dict) else REQUIRED
        if missing:
            raise RunDirError(f"{self.path}: the checkpoint lacks {', '.join(missing)} "
                              "(re-run training)")
        known = {item.name for item in fields(Checkpoint)}
        return Checkpoint(**{key: value for key, value in saved.items() if key in known})

    def load_classifier(self) -> tuple[OpenSetClassifier, Checkpoint]:
        """(classifier in eval mode, checkpoint); a spec or weights that do not fit -> error."""
        checkpoint = self.read_checkpoint()
        try:
            return checkpoint.classifier(), checkpoint
        except Exception as exc:  # noqa: BLE001 - a checkpoint that does not rebuild is bad input
            detail = " ".join(str(exc).split())  # one line: state-dict errors span several
            raise RunDirError(f"{self.path}: cannot load model.pt ({type(exc).__name__}: "
                              f"{detail[:300]})") from None

    def _read_json(self, path: Path) -> dict:
        self._need(path)
        try:
            value = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise RunDirError(f"{self.path}: cannot read {path.name} ({exc})") from None
        if not isinstance(value, dict):
            raise RunDirError(f"{self.path}: {path.name} is not a JSON object")
        return value

    def read_config(self) -> dict:
        return self._read_json(self.config_path)

    def read_metrics(self) -> dict:
        return self._read_json(self.metrics_path)

    def read_split(self) -> OpenSetSplit:
        """split.npz; a run trained before it was written gets its split re-drawn from
        config.json (the same draw, without a --imbalance thinning of the training part)."""
        if not self.split_path.is_file():
            return self._redrawn_split()
        try:
            with np.load(self.split_path, allow_pickle=False) as saved:
                return OpenSetSplit(tuple(int(c) for c in saved["known_classes"]),
                                    *(saved[part] for part in SPLIT_PARTS))
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise RunDirError(f"{self.path}: cannot read split.npz ({exc})") from None

    def dataset(self) -> ImageSet:
        """The dataset config.json names, at the run's input size and resize policy."""
        config, metrics = self.read_config(), self.read_metrics()
        images = config.get("images", {})
        shape = metrics.get("input_shape")  # what the run resolved a default size to
        size = tuple(shape[1:]) if shape else parse_image_size(images.get("image_size"))
        options = DecodeOptions(size, images.get("resize", DEFAULT_POLICY),
                                workers=images.get("workers", 0),
                                cache_bytes=int(images.get("cache_mb", 2048) * 2**20), progress=False)
        return load_dataset(config["dataset"], options)

    def _redrawn_split(self) -> OpenSetSplit:
        config, metrics = self.read_config(), self.read_metrics()
        try:
            data = self.dataset()
            known = [data.class_names.index(name) for name in metrics["known_classes"]]
            return open_set_split(data.labels, known, config["split_seed"],
                                  config["val_fraction"], config["test_fraction"])
        except (KeyError, ValueError) as exc:
            raise RunDirError(f"{self.path}: no split.npz, and config.json / metrics.json do "
                              f"not describe the split ({type(exc).__name__}: {exc})") from None

    def split_images(self, train_images: int | None = None) -> dict:
        """The run's own train images (float [0, 1]), test images (ScaledPixels: float [0, 1]
        a slice at a time) and test labels, from the dataset its config names and the indices
        in split.npz; `train_images` keeps only the first that many training images (int8
        calibration needs a few hundred, not the whole set)."""
        split = self.read_split()
        data = self.dataset()
        labels = split.relabel(data.labels)
        return {"train": ScaledPixels(data.images, split.train[:train_images])[:],
                "test_known": ScaledPixels(data.images, split.test_known),
                "test_labels": labels[split.test_known],
                "test_unknown": ScaledPixels(data.images, split.test_unknown)}
