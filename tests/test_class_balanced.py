"""Class-Balanced loss (Cui et al. 2019): effective-number weights, the three losses, composition."""
import math

import pytest
import torch
from torch.nn import functional as F

from train.config import TrainConfig
from cli_errors import UserError
from train.losses.class_balanced import (ClassBalancedFocalLoss, ClassBalancedSoftmaxLoss,
                                         build_class_balanced, effective_number_weights,
                                         init_sigmoid_bias)
from train.build import build_loss


def test_effective_number_weights_match_hand_computation():
    # beta 0.5: E_1 = 1, E_2 = (1 - 0.25) / 0.5 = 1.5 -> 1/E = (1, 2/3), sum 5/3 -> x 2 / (5/3)
    weights = effective_number_weights([1, 2], beta=0.5)
    assert weights.tolist() == pytest.approx([1.2, 0.8])
    # beta 0.9, counts 10 / 1: E_10 = (1 - 0.9^10) / 0.1 = 6.5132, E_1 = 1
    e10 = (1 - 0.9 ** 10) / 0.1
    expected = torch.tensor([1 / e10, 1.0])
    assert effective_number_weights([10, 1], 0.9).tolist() == pytest.approx(
        (expected * 2 / expected.sum()).tolist(), rel=1e-6)


@pytest.mark.parametrize("beta", [0.9, 0.99, 0.999, 0.9999])
def test_weights_sum_to_class_count_and_rarer_classes_weigh_more(beta):
    counts = [350, 209, 125, 75, 45, 27, 16, 9, 5, 3]  # mnist5k-LT, rho 100
    weights = effective_number_weights(counts, beta)
    assert weights.sum().item() == pytest.approx(10.0, rel=1e-6)
    assert torch.all(weights[1:] >= weights[:-1])  # never lighter as the class gets rarer
    assert weights[-1] > 2 * weights[0]
    # E_n saturates at 1 / (1 - beta): classes far above that count weigh the same


def test_beta_zero_gives_equal_weights_and_beta_near_one_inverse_frequency():
    assert effective_number_weights([350, 3], 0.0).tolist() == [1.0, 1.0]
    weights = effective_number_weights([300, 3], 0.999999)
    assert (weights[1] / weights[0]).item() == pytest.approx(100.0, rel=1e-3)  # ~ n_0 / n_1


def test_cb_softmax_equals_plain_cross_entropy_when_beta_is_zero():
    logits, target = torch.randn(16, 4), torch.randint(4, (16,))
    loss = build_class_balanced("cb-softmax", [500, 50, 5, 1], beta=0.0, focal_gamma=1.0)
    assert loss(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)


def test_cb_softmax_divides_by_batch_size_not_by_weight_sum():
    weights = torch.tensor([0.5, 1.5])
    logits, target = torch.randn(6, 2), torch.tensor([0, 0, 0, 0, 1, 1])
    per_sample = F.cross_entropy(logits, target, reduction="none")
    expected = (weights[target] * per_sample).sum() / 6
    loss = ClassBalancedSoftmaxLoss(weights)(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch_weighted = F.cross_entropy(logits, target, weight=weights)  # / sum of weights: 5
    assert loss.item() != pytest.approx(torch_weighted.item(), rel=1e-3)


def test_cb_sigmoid_is_weighted_sum_of_binary_cross_entropies():
    logits, target = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([1])
    weights = torch.tensor([1.0, 0.5, 1.5])
    bce = F.binary_cross_entropy_with_logits(logits, torch.tensor([[0.0, 1.0, 0.0]]), reduction="none")
    loss = ClassBalancedFocalLoss(weights, gamma=0.0)(logits, target)
    assert loss.item() == pytest.approx(0.5 * bce.sum().item(), rel=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_cb_focal_modulates_each_term_by_one_minus_p_t_to_the_gamma(gamma):
    # logits 0: p = 1/2 for every class, BCE = log 2, modulator (1/2)^gamma; K = 2 terms
    loss = ClassBalancedFocalLoss(torch.ones(2), gamma)(torch.zeros(1, 2), torch.tensor([0]))
    assert loss.item() == pytest.approx(2 * 0.5 ** gamma * math.log(2), rel=1e-6)
    # a confident right answer is down-weighted much more than a wrong one
    easy = ClassBalancedFocalLoss(torch.ones(2), gamma)(torch.tensor([[4.0, -4.0]]), torch.tensor([0]))
    hard = ClassBalancedFocalLoss(torch.ones(2), gamma)(torch.tensor([[-4.0, 4.0]]), torch.tensor([0]))
    plain = ClassBalancedFocalLoss(torch.ones(2), 0.0)
    assert easy / plain(torch.tensor([[4.0, -4.0]]), torch.tensor([0])) < \
        hard / plain(torch.tensor([[-4.0, 4.0]]), torch.tensor([0]))


@pytest.mark.parametrize("method", ["softmax", "rpl", "arpl"])
def test_cb_softmax_composes_with_every_method(method):
    outputs = {"logits": torch.randn(8, 3), "distances": torch.rand(8, 3), "radius": torch.tensor([0.5])}
    target = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    counts = [300, 30, 3]
    plain = build_loss(TrainConfig().override(method=method).resolved(1))(outputs, target)
    beta0 = build_loss(TrainConfig().override(method=method, loss="cb-softmax", cb_beta=0.0).resolved(1),
                       counts)
    assert beta0(outputs, target).item() == pytest.approx(plain.item(), rel=1e-6)
    cfg = TrainConfig().override(method=method, loss="cb-softmax", cb_beta=0.999).resolved(1)
    weighted = build_loss(cfg, counts)(outputs, target)
    # only the classification term changes: the weighted CE replaces the plain one
    weights = effective_number_weights(counts, 0.999)
    logits = outputs["logits"] / cfg.temperature
    ce_plain = F.cross_entropy(logits, target)
    ce_weighted = (weights[target] * F.cross_entropy(logits, target, reduction="none")).mean()
    assert weighted.item() == pytest.approx((plain - ce_plain + ce_weighted).item(), rel=1e-5)


def test_sigmoid_bias_init_gives_the_uniform_prior():
    linear = torch.nn.Linear(4, 10)
    init_sigmoid_bias(linear)
    assert torch.sigmoid(linear.bias).tolist() == pytest.approx([0.1] * 10)


@pytest.mark.parametrize("loss", ["cb-sigmoid", "cb-focal"])
def test_sigmoid_losses_need_the_linear_head(loss):
    with pytest.raises(UserError, match="needs the linear head"):
        TrainConfig().override(method="rpl", loss=loss).validate()
    TrainConfig().override(method="rpl", loss="cb-softmax").validate()  # allowed


@pytest.mark.parametrize("loss", ["cb-softmax", "cb-sigmoid", "cb-focal"])
def test_cb_losses_train_the_tiny_problem(loss, tiny_model, tiny_problem):
    images, labels = tiny_problem
    model = tiny_model("softmax")
    if loss != "cb-softmax":
        init_sigmoid_bias(model.head.fc)
    loss_fn = build_loss(TrainConfig().override(method="softmax", loss=loss).resolved(1), [8, 8, 8])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    losses = []
    for _ in range(20):
        outputs = model(images)
        value = loss_fn(outputs, labels)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (outputs["logits"].argmax(1) == labels).float().mean() == 1.0
