"""Long-tail fixes for every method: logit adjustment, deferred re-sampling, step budget."""
import math

import pytest
import torch

from train.config import TrainConfig
from train.drs import DeferredResampling
from train.losses.logit_adjusted import LogitAdjustedLoss
from train.fitting import epochs_for


def test_logit_adjustment_by_hand():
    loss = LogitAdjustedLoss([3, 1], tau=1.0)  # priors 0.75, 0.25
    logits = torch.zeros(2, 2)
    # equal logits + log priors: CE picks class 1 with 0.25, class 0 with 0.75
    assert loss(logits[:1], torch.tensor([1])).item() == pytest.approx(-math.log(0.25))
    assert loss(logits[:1], torch.tensor([0])).item() == pytest.approx(-math.log(0.75))
    half = LogitAdjustedLoss([3, 1], tau=0.5)
    p1 = 0.25 ** 0.5 / (0.25 ** 0.5 + 0.75 ** 0.5)
    assert half(logits[:1], torch.tensor([1])).item() == pytest.approx(-math.log(p1))
    with pytest.raises(ValueError, match="every class needs training images"):
        LogitAdjustedLoss([3, 0])


def test_deferred_resampling_switches_to_class_balanced_batches():
    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    images = labels.view(-1, 1, 1, 1).repeat(1, 1, 2, 2).to(torch.uint8) * 100  # pixel = 100 k
    hook = DeferredResampling(images, labels, start_epoch=2, augmentation="none", seed=0)
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    same_x, same_y = hook(1, x, y)
    assert same_x is x and same_y is y  # natural distribution before the switch
    drawn = torch.cat([hook(2, torch.zeros(300, 1, 2, 2), torch.zeros(300, dtype=torch.long))[1]
                       for _ in range(10)])
    counts = torch.bincount(drawn, minlength=3)
    assert counts.min() > 900 and counts.max() < 1100  # ~1000 each of 3000, not 2700/270/30
    batch, targets = hook(5, torch.zeros(8, 1, 2, 2), torch.zeros(8, dtype=torch.long))
    assert torch.allclose(batch[:, 0, 0, 0], targets.float() * 100 / 255)  # image of its class


@pytest.mark.parametrize("n_train, min_steps, expected", [
    (2100, 900, 30),   # 33 steps/epoch x 30 = 990 >= 900: --epochs as given
    (577, 900, 90),    # rho = 100: 10 steps/epoch -> 90 epochs
    (577, 0, 30),      # off
])
def test_min_steps_extends_epochs_of_small_training_sets(n_train, min_steps, expected):
    assert epochs_for(TrainConfig().override(min_steps=min_steps), n_train) == expected
