"""Training losses, one method per module. Adding one: a file, a line here, a test."""
from train.losses.arpl import AdversarialReciprocalPointLoss
from train.losses.rkd import RelationalDistillationLoss
from train.losses.rpl import ReciprocalPointLoss
from train.losses.sla import SelfLabelAugmentationLoss
from train.losses.softmax import CrossEntropyLoss

# method name -> loss; a reciprocal-point method's name is also its head variant
LOSSES = {
    "softmax": CrossEntropyLoss,
    "rpl": ReciprocalPointLoss,
    "arpl": AdversarialReciprocalPointLoss,
    "sla": SelfLabelAugmentationLoss,  # wraps one of the above (--sla-task) for the shipped head
}
# single-head methods (those with a head): the task a wrapper (SLA, RKD with --teacher) trains
# its shipped head with
TASKS = tuple(name for name, loss in LOSSES.items() if hasattr(loss, "head"))

__all__ = ["LOSSES", "TASKS", "CrossEntropyLoss", "ReciprocalPointLoss",
           "AdversarialReciprocalPointLoss", "SelfLabelAugmentationLoss",
           "RelationalDistillationLoss"]
