"""Post-hoc unknown scores of the logits alone (higher = more unknown), as suite detectors.

- MSP (Hendrycks & Gimpel, ICLR 2017):  s = -max_k softmax(l)_k
- Max-logit (Vaze et al., ICLR 2022):   s = -max_k l_k
- Energy (Liu et al., NeurIPS 2020):    s = -T * logsumexp(l / T)
with T the temperature the model was trained with (softmax(l / T) in its loss; RPL's is 0.1),
kept in a buffer so a checkpoint restores it. Nothing to fit; `fit` exists so every detector
is used the same way.
"""
from __future__ import annotations

import torch
from torch import nn


class _LogitScore(nn.Module):
    def fit(self, train: dict[str, torch.Tensor], labels: torch.Tensor,
            val: dict[str, torch.Tensor], seed: int = 0) -> _LogitScore:
        return self


class MaxSoftmaxScore(_LogitScore):
    def forward(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return -torch.softmax(outputs["logits"], dim=1).amax(dim=1)  # B


class MaxLogitScore(_LogitScore):
    def forward(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return -outputs["logits"].amax(dim=1)  # B


class EnergyScore(_LogitScore):
    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return -self.temperature * torch.logsumexp(outputs["logits"] / self.temperature, dim=1)
