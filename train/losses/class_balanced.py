"""Class-Balanced loss with effective numbers (Cui et al., CVPR 2019).

The effective number of n samples is E_n = (1 - beta^n) / (1 - beta); class y is weighted
alpha_y = 1 / E_{n_y}, rescaled so that sum_y alpha_y = C. beta = 0 gives every class weight 1
(plain loss), beta -> 1 gives inverse class frequency.

These modules are classification terms: forward(logits, target) -> scalar, used by the
method losses (softmax, RPL, ARPL) in place of their plain CE(logits / T, y). The batch mean
divides by N, not by the sum of the weights (which torch's cross_entropy(weight=...) does).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def effective_number_weights(counts: Sequence[int], beta: float) -> torch.Tensor:
    """alpha_y = (1 - beta) / (1 - beta^{n_y}), normalised to sum to C. K counts -> K weights."""
    n = torch.as_tensor(counts, dtype=torch.float64)  # K
    if (n < 1).any():
        raise ValueError(f"every class needs at least one training sample, got counts {counts}")
    effective = (1 - beta ** n) / (1 - beta)  # K, E_n
    weights = 1 / effective
    return (weights * len(n) / weights.sum()).float()


class ClassBalancedSoftmaxLoss(nn.Module):
    """L = (1/N) sum_i alpha_{y_i} * CE(z_i, y_i)."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.register_buffer("weights", weights.float())  # K

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = F.cross_entropy(logits, target, reduction="none")  # B
        return (self.weights[target] * per_sample).mean()


class ClassBalancedFocalLoss(nn.Module):
    """L = (1/N) sum_i alpha_{y_i} sum_k (1 - p^t_ik)^gamma * BCE(z_ik, [k == y_i]).

    p^t_ik = sigmoid(z_ik) for k = y_i, else 1 - sigmoid(z_ik). gamma = 0 is the CB sigmoid
    loss. Train the linear head's bias from -log(C - 1) (init_sigmoid_bias), as the paper does,
    so that the initial sigmoid outputs match the 1/C prior instead of 1/2.
    """

    def __init__(self, weights: torch.Tensor, gamma: float = 0.0):
        super().__init__()
        self.register_buffer("weights", weights.float())  # K
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(target, logits.shape[1]).to(logits.dtype)  # B x K
        bce = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")  # B x K
        if self.gamma > 0:
            signed = torch.where(one_hot > 0, logits, -logits)  # B x K, z^t: p^t = sigmoid(z^t)
            bce = torch.exp(self.gamma * F.logsigmoid(-signed)) * bce  # (1 - p^t)^gamma, stable
        return (self.weights[target] * bce.sum(1)).mean()


def init_sigmoid_bias(linear: nn.Linear) -> None:
    """Bias b = -log(C - 1): sigmoid(b) = 1/C, the paper's initialisation for sigmoid/focal."""
    num_classes = linear.out_features
    nn.init.constant_(linear.bias, -math.log(num_classes - 1) if num_classes > 2 else 0.0)


# --loss name -> classification term; "ce" keeps the method's own plain CE (cb-sigmoid = focal, gamma 0)
CLASS_BALANCED = {
    "cb-softmax": ClassBalancedSoftmaxLoss,
    "cb-sigmoid": ClassBalancedFocalLoss,
    "cb-focal": ClassBalancedFocalLoss,
}
SIGMOID_LOSSES = ("cb-sigmoid", "cb-focal")  # need a linear head (bias init, per-class BCE)


def build_class_balanced(name: str, counts: Sequence[int], beta: float,
                         focal_gamma: float) -> nn.Module:
    """The --loss classification term from the training counts (K, the label order)."""
    weights = effective_number_weights(counts, beta)
    if name == "cb-softmax":
        return ClassBalancedSoftmaxLoss(weights)
    return ClassBalancedFocalLoss(weights, focal_gamma if name == "cb-focal" else 0.0)
