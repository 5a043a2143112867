import pytest
import torch

from train.losses import LOSSES, task_names
from train.build import build_loss
from train.config import TrainConfig

from conftest import training_inputs


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_loss_is_finite_scalar(method, tiny_model, tiny_problem):
    images, labels = tiny_problem
    model = tiny_model(method)
    loss_fn = build_loss(TrainConfig().override(method=method).resolved(1))
    loss = loss_fn(model(training_inputs(method, images)), labels)
    assert loss.shape == ()
    assert torch.isfinite(loss)
    assert loss.item() > 0


@pytest.mark.parametrize("method", ["rpl", "arpl"])
def test_gradients_reach_points_and_radius(method, tiny_model, tiny_problem):
    images, labels = tiny_problem
    model = tiny_model(method)
    build_loss(TrainConfig().override(method=method).resolved(1))(model(images), labels).backward()
    assert model.head.points.grad is not None and model.head.points.grad.abs().sum() > 0
    assert model.head.radius.grad is not None and model.head.radius.grad.abs().sum() > 0
    assert model.backbone.features[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_loss_falls_on_tiny_problem(method, tiny_model, tiny_problem):
    images, labels = tiny_problem
    model = tiny_model(method)
    loss_fn = build_loss(TrainConfig().override(method=method).resolved(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    losses = []
    for _ in range(20):
        outputs = model(training_inputs(method, images))
        loss = loss_fn(outputs, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (outputs["logits"][:len(labels)].argmax(1) == labels).float().mean() == 1.0  # fits it


def test_rpl_open_space_term_is_squared_distance_to_radius():
    outputs = {"logits": torch.zeros(2, 2), "distances": torch.tensor([[3.0, 1.0], [2.0, 5.0]]),
               "radius": torch.tensor([1.0])}
    loss = LOSSES["rpl"](temperature=1.0, open_space_weight=1.0)(outputs, torch.tensor([0, 1]))
    # CE of uniform logits = log 2; open space = mean((3-1)^2, (5-1)^2) = 10
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item() + 10.0)


def test_arpl_margin_term_is_hinge_on_radius_plus_one():
    outputs = {"logits": torch.zeros(2, 2), "distances": torch.tensor([[3.0, 1.0], [2.0, 0.5]]),
               "radius": torch.tensor([1.0])}
    loss = LOSSES["arpl"](temperature=1.0, open_space_weight=1.0)(outputs, torch.tensor([0, 1]))
    # hinge: max(0, 3 - 1 + 1) = 3 and max(0, 0.5 - 1 + 1) = 0.5 -> mean 1.75
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item() + 1.75)


@pytest.mark.parametrize("method", task_names())  # SLA passes it to its task (tests/test_sla.py)
def test_temperature_divides_the_logits(method):
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    outputs = {"logits": logits, "distances": torch.zeros(2, 2), "radius": torch.tensor([0.0])}
    target = torch.tensor([0, 0])
    cfg = TrainConfig().override(method=method, temperature=0.5, open_space_weight=0.0)
    loss = build_loss(cfg.resolved(1))
    expected = torch.nn.functional.cross_entropy(logits / 0.5, target)  # open-space weight 0
    assert loss(outputs, target).item() == pytest.approx(expected.item(), rel=1e-6)
