import math

import pytest
import torch

from train.confusing import CONFUSING_LABEL, between_class_mixtures, uncertainty_loss
from train.losses import LOSSES


def test_mixtures_only_mix_different_classes():
    images = torch.stack([torch.full((1, 2, 2), float(k)) for k in range(6)])  # image k is all k
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    mixed = between_class_mixtures(images, labels, 6, torch.Generator().manual_seed(0))
    assert len(mixed) > 0
    for image in mixed:
        value = image[0, 0, 0].item()
        # a mixture of an image from {0,1,2} with one from {3,4,5}, weight in [0.35, 0.65]
        assert 0.35 * 3 - 1e-6 <= value <= 0.65 * 5 + 0.35 * 2 + 1e-6
        assert (image == value).all()


def test_mixtures_respect_count_and_single_class_batches():
    images, labels = torch.rand(8, 1, 3, 3), torch.tensor([0, 1] * 4)
    assert len(between_class_mixtures(images, labels, 2, torch.Generator().manual_seed(1))) <= 2
    same = between_class_mixtures(images, torch.zeros(8, dtype=torch.long), 8,
                                  torch.Generator().manual_seed(1))
    assert len(same) == 0


def test_uncertainty_is_zero_for_uniform_and_grows_with_confidence():
    assert uncertainty_loss(torch.zeros(3, 4)).item() == pytest.approx(0.0, abs=1e-7)
    peaked = uncertainty_loss(torch.tensor([[10.0, 0.0, 0.0, 0.0]]))
    assert 0 < peaked.item() <= math.log(4)
    assert uncertainty_loss(torch.zeros(0, 4)).item() == 0.0


@pytest.mark.parametrize("method", ["rpl", "arpl"])
def test_confusing_rows_only_add_the_weighted_uncertainty(method):
    torch.manual_seed(0)
    outputs = {"logits": torch.randn(5, 3), "distances": torch.rand(5, 3),
               "radius": torch.tensor([0.5])}
    target = torch.tensor([0, 1, 2, CONFUSING_LABEL, CONFUSING_LABEL])
    loss_fn = LOSSES[method](confusing_weight=0.3)
    known_only = {"logits": outputs["logits"][:3], "distances": outputs["distances"][:3],
                  "radius": outputs["radius"]}
    expected = loss_fn(known_only, target[:3]) + 0.3 * uncertainty_loss(outputs["logits"][3:])
    assert loss_fn(outputs, target).item() == pytest.approx(expected.item(), rel=1e-6)
