"""Training losses, one method per module. Adding one: a file, a line here, a test."""
from train.losses.arpl import AdversarialReciprocalPointLoss
from train.losses.rpl import ReciprocalPointLoss
from train.losses.softmax import CrossEntropyLoss

# method name -> loss; a reciprocal-point method's name is also its head variant
LOSSES = {
    "softmax": CrossEntropyLoss,
    "rpl": ReciprocalPointLoss,
    "arpl": AdversarialReciprocalPointLoss,
}

__all__ = ["LOSSES", "CrossEntropyLoss", "ReciprocalPointLoss", "AdversarialReciprocalPointLoss"]
