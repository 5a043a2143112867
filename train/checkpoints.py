"""Another run's trained classifier (an RKD teacher, M2m's steering run), checked for fit."""
from __future__ import annotations

from collections.abc import Sequence

from cli_errors import UserError
from models import OpenSetClassifier
from rundir import Checkpoint, RunDirectory, RunDirError


def load_fitting_classifier(run_dir: str, flag: str, class_names: Sequence[str],
                            input_shape: Sequence[int]) -> tuple[OpenSetClassifier, Checkpoint]:
    """(classifier in eval mode with frozen weights, checkpoint) from `run_dir`/model.pt.

    It must answer the same classes in the same order for the same input shape as this run,
    or its outputs would mean something else; `flag` names the option in error messages."""
    try:
        classifier, checkpoint = RunDirectory(run_dir).load_classifier()
    except RunDirError as exc:
        raise UserError(f"{flag} {exc}") from None
    if list(checkpoint.class_names) != list(class_names):
        raise UserError(f"{flag} {run_dir}: trained on classes {checkpoint.class_names}, "
                        f"this run has {list(class_names)}")
    if list(checkpoint.input_shape) != list(input_shape):
        raise UserError(f"{flag} {run_dir}: input shape {checkpoint.input_shape}, "
                        f"this run has {list(input_shape)}")
    classifier.requires_grad_(False)
    return classifier, checkpoint
