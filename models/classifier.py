"""Backbone + head with the input normalisation inside, so callers feed pixels in [0, 1]."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class OpenSetClassifier(nn.Module):
    """images (B x C x H x W, [0, 1]) -> head outputs + `embedding` (B x D).

    With an SLA joint head (models/sla.py) the outputs also carry `joint_logits` (B x N*M);
    the head itself is then the single-pass self-distilled head that ships. With a fitted
    post-hoc `detector` (models/detectors) the served `unknown_score` is the detector's and the
    head's own score stays in the outputs as `head_score`.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module,
                 mean: Sequence[float], std: Sequence[float], joint_head: nn.Module | None = None,
                 detector: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.joint_head = joint_head
        self.detector = detector
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def has_distances(self) -> bool:
        """Whether the outputs carry reciprocal-point `distances`."""
        return hasattr(self.head, "points")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.backbone((images - self.mean) / self.std)  # B x D
        outputs = self.head(embedding)
        outputs["embedding"] = embedding
        if self.joint_head is not None:
            outputs["joint_logits"] = self.joint_head(embedding)  # B x N*M
        if self.detector is not None:
            outputs["head_score"] = outputs["unknown_score"]
            outputs["unknown_score"] = self.detector(outputs)  # B
        return outputs

    def all_scores(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every unknown score the head can serve, for side-by-side evaluation."""
        return self.head.all_scores(outputs)
