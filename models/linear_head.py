"""Linear classifier head and the post-hoc unknown scores a plain softmax model can serve."""
from __future__ import annotations

import torch
from torch import nn


def msp_unknown_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel 2017), negated: higher = more unknown."""
    return -torch.softmax(logits, dim=1).amax(dim=1)


def mls_unknown_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum logit score (Vaze et al. 2022), negated: higher = more unknown."""
    return -logits.amax(dim=1)


SCORES = {"msp": msp_unknown_score, "mls": mls_unknown_score}


class LinearHead(nn.Module):
    """z -> logits = W z + b; unknown_score from the configured post-hoc score."""

    def __init__(self, embed_dim: int, num_classes: int, score: str = "mls"):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; choose from {sorted(SCORES)}")
        self.fc = nn.Linear(embed_dim, num_classes)
        self.score = score

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc(z)  # B x K
        return {"logits": logits, "unknown_score": SCORES[self.score](logits)}

    def all_scores(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every unknown score this head can serve, for side-by-side evaluation."""
        return {name: fn(outputs["logits"]) for name, fn in SCORES.items()}
