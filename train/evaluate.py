"""Score the test split and compute the open-set protocol's figures."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.sla import NUM_VIEWS, transform_views, view_logits
from train.batches import eval_batch_size, read_all
from train.calibration import accept_rate
from train.metrics import auroc, closed_set_accuracy, oscr


@torch.no_grad()
def predict(model: nn.Module, images, device: torch.device,
            batch_size: int | None = None) -> dict[str, np.ndarray]:
    """logits, embedding, the served unknown_score, and every alternative score the head defines
    (`images`: uint8 N x C x H x W, an array or file images)."""
    model.eval().to(device)
    batch_size = batch_size or eval_batch_size(images)
    chunks: dict[str, list[np.ndarray]] = {}
    batches = read_all(images, batch_size) if len(images) else [
        torch.zeros((0, *images.shape[1:]), dtype=torch.uint8)]  # an empty set -> empty arrays
    for batch in batches:
        x = batch.to(device).float() / 255
        outputs = model(x)
        row = {"logits": outputs["logits"], "unknown_score": outputs["unknown_score"],
               "embedding": outputs["embedding"]}
        row.update({f"score:{k}": v for k, v in model.all_scores(outputs).items()})
        for key, value in row.items():
            chunks.setdefault(key, []).append(value.float().cpu().numpy())
    return {key: np.concatenate(parts) for key, parts in chunks.items()}


@torch.no_grad()
def view_accuracy(model: nn.Module, transform: str, images, labels: np.ndarray,
                  device: torch.device, batch_size: int | None = None) -> list[float]:
    """Accuracy of an SLA joint head on each single view t_j(x), j = 0..M-1 (argmax over
    classes i of joint(t_j(x))[i*M + j]): how well each view SLA+AG averages is learned."""
    model.eval().to(device)
    m = NUM_VIEWS[transform]
    batch_size = batch_size or eval_batch_size(images, most=256)
    correct = np.zeros(m)
    for start, batch in zip(range(0, len(images), batch_size), read_all(images, batch_size)):
        x = batch.to(device).float() / 255
        per_view = view_logits(model(transform_views(x, transform))["joint_logits"], m)
        predicted = per_view.argmax(2).cpu().numpy()  # M x B
        correct += (predicted == labels[start:start + batch_size]).sum(1)
    return (correct / max(1, len(images))).tolist()


def open_set_metrics(known: dict[str, np.ndarray], known_labels: np.ndarray,
                     unknown: dict[str, np.ndarray], threshold: float) -> dict:
    """Closed-set accuracy, AUROC and OSCR for the served score and for every alternative.

    A closed-set run (no unknown test images) reports AUROC and OSCR as None."""
    correct = known["logits"].argmax(1) == known_labels
    per_score = {}
    for key in known:
        if key.startswith("score:"):
            per_score[key[len("score:"):]] = {
                "auroc": auroc(known[key], unknown[key]),
                "oscr": oscr(known[key], correct, unknown[key]),
            }
    served_known, served_unknown = known["unknown_score"], unknown["unknown_score"]
    if len(served_unknown) == 0:
        per_score = {name: {"auroc": None, "oscr": None} for name in per_score}
    return {
        "closed_acc": closed_set_accuracy(known["logits"].argmax(1), known_labels),
        "auroc": auroc(served_known, served_unknown) if len(served_unknown) else None,
        "oscr": oscr(served_known, correct, served_unknown) if len(served_unknown) else None,
        "threshold": threshold,
        "known_accept_rate": accept_rate(served_known, threshold),
        "unknown_reject_rate": (1 - accept_rate(served_unknown, threshold)
                                if len(served_unknown) else None),
        "scores": per_score,
    }
