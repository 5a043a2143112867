"""The module that is exported to ONNX: exactly the tensors of the model contract (DESIGN.md)."""
from __future__ import annotations

import torch
from torch import nn

from models.classifier import OpenSetClassifier
from models.sla import AggregatedClassifier


class ContractModel(nn.Module):
    """images [B, C, H, W] in [0, 1] -> logits [B, K], unknown_score [B]
    (, reciprocal_score [B], distances [B, K] for reciprocal-point models).

    The scores come from the head's own forward, so serving never re-implements them.
    """

    def __init__(self, classifier: OpenSetClassifier | AggregatedClassifier):
        super().__init__()
        self.classifier = classifier
        self.has_distances = classifier.has_distances

    @property
    def output_names(self) -> list[str]:
        return ["logits", "unknown_score"] + (["reciprocal_score", "distances"]
                                              if self.has_distances else [])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.classifier(images)
        return tuple(outputs[name] for name in self.output_names)
