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


def task_names() -> tuple[str, ...]:
    """The single-head methods (those with a head): what a wrapper (SLA, RKD with --teacher)
    can train its shipped head with. Read from LOSSES on each call, so a new entry counts."""
    return tuple(name for name, loss in LOSSES.items() if hasattr(loss, "head"))

__all__ = ["LOSSES", "task_names", "CrossEntropyLoss", "ReciprocalPointLoss",
           "AdversarialReciprocalPointLoss", "SelfLabelAugmentationLoss",
           "RelationalDistillationLoss"]
