"""Load another run's trained classifier (an RKD teacher, M2m's fixed g), checked for fit."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from models import ModelSpec, OpenSetClassifier, build_classifier
from cli_errors import UserError


def load_run_classifier(run_dir: str, flag: str, class_names: Sequence[str],
                        input_shape: Sequence[int]) -> tuple[OpenSetClassifier, dict]:
    """(classifier in eval mode with frozen weights, checkpoint) from `run_dir`/model.pt.

    It must answer the same classes in the same order for the same input shape as this run,
    or its outputs would mean something else; `flag` names the option in error messages."""
    path = Path(run_dir) / "model.pt"
    if not path.is_file():
        raise UserError(f"{flag} {run_dir}: not a run directory (no model.pt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        classifier = build_classifier(ModelSpec.from_dict(checkpoint["model_spec"]))
        classifier.load_state_dict(checkpoint["state_dict"])
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a bad input file
        raise UserError(f"{flag} {run_dir}: cannot load model.pt ({type(exc).__name__})") from None
    if list(checkpoint.get("class_names", [])) != list(class_names):
        raise UserError(f"{flag} {run_dir}: trained on classes {checkpoint.get('class_names')}, "
                        f"this run has {list(class_names)}")
    if list(checkpoint.get("input_shape", [])) != list(input_shape):
        raise UserError(f"{flag} {run_dir}: input shape {checkpoint.get('input_shape')}, "
                        f"this run has {list(input_shape)}")
    classifier.eval().requires_grad_(False)
    return classifier, checkpoint
