"""M2m (Kim et al. 2020): seed and acceptance probabilities, the translation, the batch hook,
loading the steering classifier g."""
import math

import pytest
import torch

from models import build_classifier
from tests.conftest import tiny_spec
from cli_errors import UserError
from rundir import Checkpoint, RunDirectory
from train.config import M2mConfig
from train.m2m import (MajorToMinor, acceptance_probability, generation_probability, load_steering,
                       translate)


def test_acceptance_probability_is_one_minus_beta_to_the_count_gap():
    p = acceptance_probability([100, 10, 1], beta=0.9)
    assert p[2, 0].item() == pytest.approx(1 - 0.9 ** 99)  # target 2 (1 image), seed 0 (100)
    assert p[2, 1].item() == pytest.approx(1 - 0.9 ** 9)
    assert p[1, 0].item() == pytest.approx(1 - 0.9 ** 90)
    assert p[0].tolist() == [0, 0, 0]  # nothing is more frequent than the head class
    assert p[1, 2].item() == 0 and torch.diagonal(p).tolist() == [0, 0, 0]


def test_generation_probability_is_one_minus_count_ratio():
    assert generation_probability([100, 10, 1]).tolist() == pytest.approx([0.0, 0.9, 0.99])


def fitted_g(tiny_problem, steps: int = 30) -> torch.nn.Module:
    images, labels = tiny_problem
    g = build_classifier(tiny_spec("softmax"))
    optimizer = torch.optim.SGD(g.parameters(), lr=0.3, momentum=0.9)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(g(images)["logits"], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return g.eval()


def test_translation_moves_a_seed_towards_the_target_class_under_a_fixed_g(tiny_problem):
    images, labels = tiny_problem
    g = fitted_g(tiny_problem)
    f = build_classifier(tiny_spec("softmax")).eval()
    seeds = images[labels == 0][:4]  # class-0 images
    targets = torch.full((4,), 2)
    with torch.no_grad():
        before = torch.log_softmax(g(seeds)["logits"], 1)[:, 2]
    assert before.max() < -10  # g is sure these are not class 2
    x = translate(g, f, seeds, torch.zeros(4, dtype=torch.long), targets, seed_weight=0.0, step_size=0.5,
                  steps=20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = torch.log_softmax(g(x)["logits"], 1)[:, 2]
    assert torch.all(after > before + 10)  # log p_g(target) up by > 10 nats for every seed
    assert after.exp().mean() > 0.4
    assert x.min() >= 0 and x.max() <= 1
    # normalised steps: x moved at most noise (0.5) + steps * eta (10) in L2 from the seed
    assert torch.all((x - seeds).flatten(1).norm(dim=1) <= 0.5 + 20 * 0.5 + 1e-4)


def test_translation_lowers_f_seed_logit_when_only_lambda_term_acts(tiny_problem):
    images, labels = tiny_problem
    f = fitted_g(tiny_problem)
    g = build_classifier(tiny_spec("softmax")).eval()
    seeds = images[labels == 0][:4]
    seed_classes = torch.zeros(4, dtype=torch.long)
    x0 = translate(g, f, seeds, seed_classes, torch.full((4,), 2), seed_weight=1.0, step_size=0.5, steps=0,
                   generator=torch.Generator().manual_seed(0))  # noise only
    x = translate(g, f, seeds, seed_classes, torch.full((4,), 2), seed_weight=1e3, step_size=0.5, steps=10,
                  generator=torch.Generator().manual_seed(0))
    assert torch.all(f(x)["logits"][:, 0] < f(x0)["logits"][:, 0] - 1.0)


def hook(tiny_problem, counts, beta=0.99, gamma=0.0, start_epoch=1, steps=0):
    """MajorToMinor on a tiny imbalanced set: `counts[k]` images of class k."""
    images, labels = tiny_problem
    pixels = (images * 255).round().to(torch.uint8)
    picks = torch.cat([(labels == k).nonzero().view(-1)[:1].repeat(n) for k, n in enumerate(counts)])
    settings = M2mConfig(start_epoch=start_epoch, beta=beta, seed_weight=0.5, accept_confidence=gamma,
                         step_size=0.1, steps=steps)
    g = fitted_g(tiny_problem)
    f = build_classifier(tiny_spec("softmax"))
    return MajorToMinor(g, f, pixels[picks], labels[picks], settings, "none", seed=0)


def test_hook_leaves_batches_alone_before_the_start_epoch(tiny_problem):
    m2m = hook(tiny_problem, [100, 10, 1])
    x, y = torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)
    same_x, same_y = m2m(0, x, y)
    assert same_x is x and same_y is y and m2m.generated.sum() == 0


def test_hook_rebalances_and_accepts_with_the_rejection_probability(tiny_problem):
    # gamma = 0: g always passes, so acceptance is the Bernoulli draw alone.
    # class 1 (10 images) seeds only from class 0: p = 1 - 0.99^90; class 2 (1 image) from class 0
    # (q ∝ 1 - 0.99^99) or class 1 (q ∝ 1 - 0.99^9): accepted with E[p] = sum q_k0 p_k0.
    m2m = hook(tiny_problem, [100, 10, 1])
    labels = []
    for _ in range(60):
        x, y = m2m(1, torch.rand(64, 1, 8, 8), torch.zeros(64, dtype=torch.long))
        assert x.shape == (64, 1, 8, 8)
        labels.append(y)
    share = torch.bincount(torch.cat(labels), minlength=3).float() / (60 * 64)
    assert share.tolist() == pytest.approx([1 / 3] * 3, abs=0.03)  # class-balanced batches
    generated, accepted = m2m.generated.float(), m2m.accepted.float()
    assert generated[0] == 0  # the head class is never generated
    n = 60 * 64 / 3
    assert generated[1] == pytest.approx(0.9 * n, rel=0.1)  # 1 - N_k / N_max
    assert generated[2] == pytest.approx(0.99 * n, rel=0.1)
    p10 = 1 - 0.99 ** 90
    assert (accepted[1] / generated[1]).item() == pytest.approx(p10, abs=0.05)
    p20, p21 = 1 - 0.99 ** 99, 1 - 0.99 ** 9
    expected = (p20 * p20 + p21 * p21) / (p20 + p21)
    assert (accepted[2] / generated[2]).item() == pytest.approx(expected, abs=0.05)


def test_hook_rejects_everything_g_is_not_confident_about(tiny_problem):
    m2m = hook(tiny_problem, [100, 10, 1], gamma=1.0 + 1e-6, steps=0)
    for _ in range(5):
        m2m(1, torch.rand(32, 1, 8, 8), torch.zeros(32, dtype=torch.long))
    assert m2m.generated.sum() > 0 and m2m.accepted.sum() == 0


def save_run(path, class_names, input_shape, method="softmax"):
    path.mkdir()
    model = build_classifier(tiny_spec("softmax"))
    RunDirectory(path).write_checkpoint(Checkpoint(
        model_spec=tiny_spec("softmax").to_dict(), state_dict=model.state_dict(),
        class_names=class_names, input_shape=input_shape, method=method, threshold=0.0,
        threshold_rule="none (test)"))
    return str(path)


def test_load_steering_accepts_a_compatible_run_and_names_what_is_wrong(tmp_path):
    good = save_run(tmp_path / "good", ["a", "b", "c"], [1, 8, 8])
    g = load_steering(good, ["a", "b", "c"], [1, 8, 8])
    assert not g.training and g(torch.rand(2, 1, 8, 8))["logits"].shape == (2, 3)
    with pytest.raises(UserError, match="trained on classes"):
        load_steering(good, ["a", "b", "d"], [1, 8, 8])
    with pytest.raises(UserError, match="input shape"):
        load_steering(good, ["a", "b", "c"], [1, 28, 28])
    with pytest.raises(UserError, match="no model.pt"):
        load_steering(str(tmp_path), ["a", "b", "c"], [1, 8, 8])
    arpl = save_run(tmp_path / "arpl", ["a", "b", "c"], [1, 8, 8], method="arpl")
    with pytest.raises(UserError, match="plain-CE softmax run"):
        load_steering(arpl, ["a", "b", "c"], [1, 8, 8])
    cb = save_run(tmp_path / "cb", ["a", "b", "c"], [1, 8, 8])
    (tmp_path / "cb" / "config.json").write_text('{"method": "softmax", "loss": "cb-softmax"}')
    with pytest.raises(UserError, match="with --loss cb-softmax"):
        load_steering(cb, ["a", "b", "c"], [1, 8, 8])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot load"):
        load_steering(str(tmp_path / "broken"), ["a", "b", "c"], [1, 8, 8])
    with torch.no_grad():
        assert math.isfinite(float(g(torch.rand(1, 1, 8, 8))["logits"].sum()))
