"""SLA with self-distillation, SLA+SD (Lee et al., ICML 2020).

Trained on view-major batches of M transformed copies (models/sla.py), with N classes:
    L = mean_{b,j} CE(joint(t_j(x_b)), y_b * M + j)                      (SLA, joint head)
      + T^2 * KL(softmax(s / T).detach() || softmax(u / T))             (self-distillation)
      + task(u, y)                                                      (the single-pass head)
      [+ CE(s, y) with aggregate_loss: the official code's --with-training-agg]
s = aggregated joint logits (SLA+AG) and u = the classifier's own head on the untransformed
view. The task loss is any single-head method (softmax CE, RPL, ARPL), so the shipped one-pass
head can be a reciprocal-point head with its distance-based unknown score. For those, u is the
head's logits divided by the task's temperature: the probabilities the task itself trains.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.sla import NUM_VIEWS, aggregate, joint_labels


class SelfLabelAugmentationLoss(nn.Module):
    """Wraps the task loss of the shipped head; the method's temperature is the task's."""

    def __init__(self, task: nn.Module, transform: str = "rotation",
                 distill_temperature: float = 1.0, aggregate_loss: bool = False):
        super().__init__()
        self.task = task
        self.num_views = NUM_VIEWS[transform]
        self.distill_temperature = distill_temperature
        self.aggregate_loss = aggregate_loss

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        m, batch = self.num_views, target.shape[0]
        joint = outputs["joint_logits"]  # M*B x N*M
        sla = F.cross_entropy(joint, joint_labels(target, m))
        aggregated = aggregate(joint, m)  # B x N
        # the untransformed view: rows 0..B-1 of every per-row output (radius etc. pass through)
        plain = {key: value[:batch] if value.ndim and value.shape[0] == m * batch else value
                 for key, value in outputs.items()}
        t = self.distill_temperature
        student = plain["logits"] / self.task.temperature / t  # B x N
        distill = F.kl_div(F.log_softmax(student, dim=1),
                           F.softmax(aggregated.detach() / t, dim=1), reduction="batchmean")
        loss = sla + t * t * distill + self.task(plain, target)
        if self.aggregate_loss:  # trains the M-view ensemble itself, not only each view
            loss = loss + F.cross_entropy(aggregated, target)
        return loss
