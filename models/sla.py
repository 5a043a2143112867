"""Self-supervised label augmentation, SLA (Lee et al., ICML 2020): views, joint labels, SLA+AG.

M transformations t_j with t_0 the identity: rotations by j * 90 degrees (M = 4, any square
input) or the 6 RGB channel permutations (M = 6, colour input only). A joint head predicts
(class, transformation) pairs with joint label y * M + j (class-major), and aggregated inference
averages the M matching joint logits:
    SLA+AG: s_i = (1/M) * sum_j joint_logits(t_j(x))[i * M + j]
Batches of views are view-major: rows j*B .. j*B + B - 1 hold t_j of the B images.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from models.linear_head import SCORES

PERMUTATIONS = tuple(itertools.permutations(range(3)))  # (0, 1, 2) first: the identity
NUM_VIEWS = {"rotation": 4, "permutation": 6}


def transform_views(images: torch.Tensor, transform: str) -> torch.Tensor:
    """B x C x H x W -> M*B x C x H x W, view-major; view 0 is the input itself."""
    if transform == "rotation":  # k * 90 degrees counter-clockwise, = torch.rot90(x, k, (2, 3))
        # written as flips + transposes: the ONNX exporter has no rot90
        views = [images, images.flip(3).transpose(2, 3), images.flip((2, 3)),
                 images.flip(2).transpose(2, 3)]
    elif transform == "permutation":
        views = [images[:, list(order)] for order in PERMUTATIONS]
    else:
        raise ValueError(f"unknown SLA transform {transform!r}; choose from {sorted(NUM_VIEWS)}")
    return torch.cat(views)


def joint_labels(labels: torch.Tensor, num_views: int) -> torch.Tensor:
    """B class labels -> M*B joint labels y * M + j, in the view-major order of the views."""
    return torch.cat([labels * num_views + j for j in range(num_views)])


def view_logits(joint_logits: torch.Tensor, num_views: int) -> torch.Tensor:
    """M*B x N*M joint logits (view-major) -> M x B x N: view j's logits joint(t_j(x))[i*M + j]."""
    m = num_views
    per_view = joint_logits.reshape(m, -1, joint_logits.shape[1] // m, m)  # M x B x N x M
    # an eye mask, not diagonal(), so the dynamic-batch ONNX graph stays plain Mul/ReduceSum
    mask = torch.eye(m, dtype=joint_logits.dtype, device=joint_logits.device)[:, None, None, :]
    return (per_view * mask).sum(dim=3)


def aggregate(joint_logits: torch.Tensor, num_views: int) -> torch.Tensor:
    """M*B x N*M joint logits (view-major) -> B x N aggregated logits s (SLA+AG)."""
    return view_logits(joint_logits, num_views).sum(dim=0) / num_views


class AggregatedClassifier(nn.Module):
    """SLA+AG inference: M forward passes of a classifier with a joint head, one answer per image.

    images -> logits (the aggregated s), unknown_score (a post-hoc score of s), embedding of the
    untransformed view. An evaluation mode and an export option; the single-pass distilled head
    (the classifier's own forward) is what ships by default.
    """

    has_distances = False

    def __init__(self, classifier: nn.Module, transform: str, score: str = "mls"):
        super().__init__()
        if getattr(classifier, "joint_head", None) is None:
            raise ValueError("aggregated inference needs a classifier trained with SLA")
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r} for aggregated logits; choose from {sorted(SCORES)}")
        self.classifier = classifier
        self.transform = transform
        self.num_views = NUM_VIEWS[transform]
        self.score = score

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.classifier(transform_views(images, self.transform))
        logits = aggregate(outputs["joint_logits"], self.num_views)  # B x N
        embedding = outputs["embedding"].reshape(self.num_views, -1, outputs["embedding"].shape[1])
        return {"logits": logits, "unknown_score": SCORES[self.score](logits),
                "embedding": embedding[0]}

    def all_scores(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: fn(outputs["logits"]) for name, fn in SCORES.items()}
