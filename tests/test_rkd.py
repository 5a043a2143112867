"""RKD: the relational losses, the teacher hook, teacher checks, and multiply-add counting
(the RKD study: tests/test_studies.py)."""
import json

import pytest
import torch
from torch import nn

from models.complexity import count_macs
from train.losses import CrossEntropyLoss, RelationalDistillationLoss
from train.losses.rkd import angle_potential, distance_potential, rkd_angle_loss, rkd_distance_loss



def embeddings(seed: int, n: int = 8, d: int = 5) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_distance_potential_by_hand():
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # distances 3, 4, 5; mean 4
    expected = torch.tensor([[0, 3, 4], [3, 0, 5], [4, 5, 0]]) / 4
    assert torch.allclose(distance_potential(points), expected, atol=1e-5)


def test_angle_potential_by_hand():
    points = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    psi = angle_potential(points)
    assert psi[1, 0, 2].item() == pytest.approx(0.0, abs=1e-6)  # right angle at the origin
    assert psi[0, 1, 2].item() == pytest.approx(2 ** -0.5, abs=1e-6)  # 45 degrees at (1, 0)


def test_rkd_losses_are_zero_for_identical_embeddings():
    teacher = embeddings(0)
    assert rkd_distance_loss(teacher.clone(), teacher).item() == pytest.approx(0, abs=1e-10)
    assert rkd_angle_loss(teacher.clone(), teacher).item() == pytest.approx(0, abs=1e-10)


def test_rkd_losses_ignore_a_global_scale_of_the_teacher():
    student, teacher = embeddings(1), embeddings(2)
    for loss in (rkd_distance_loss, rkd_angle_loss):
        assert loss(student, 7.5 * teacher).item() == pytest.approx(loss(student, teacher).item(), rel=1e-5)
        assert loss(3.0 * teacher, teacher).item() == pytest.approx(0, abs=1e-10)


def test_rkd_losses_are_positive_for_different_relations():
    student, teacher = embeddings(3), embeddings(4)
    assert rkd_distance_loss(student, teacher).item() > 1e-3
    assert rkd_angle_loss(student, teacher).item() > 1e-3


def test_rkd_loss_adds_weighted_terms_to_the_task_and_trains_the_student(tiny_model):
    model = tiny_model("softmax")
    images, target = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    outputs = model(images)
    outputs["teacher_embedding"] = embeddings(5, n=6, d=12)
    loss = RelationalDistillationLoss(CrossEntropyLoss(), distance_weight=2.0, angle_weight=3.0)
    student = nn.functional.normalize(outputs["embedding"], dim=1)
    teacher = nn.functional.normalize(outputs["teacher_embedding"], dim=1)
    expected = (nn.functional.cross_entropy(outputs["logits"], target)
                + 2.0 * rkd_distance_loss(student, teacher) + 3.0 * rkd_angle_loss(student, teacher))
    value = loss(outputs, target)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert model.backbone.features[0][0].weight.grad.abs().sum() > 0


def test_count_macs_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 3))
    assert count_macs(model, (1, 4, 4)) == 2 * 4 * 4 * 9 + 32 * 3
    assert model.training  # mode restored


def test_half_width_small_cnn_has_under_a_third_of_the_macs(tiny_model):
    from models import ModelSpec, build_classifier

    def macs(width: float) -> int:
        spec = ModelSpec(arch="small_cnn", in_channels=1, num_classes=10, head="linear", width=width)
        return count_macs(build_classifier(spec), (1, 28, 28))

    assert macs(0.5) < macs(1.0) / 3


def test_student_run_records_its_teacher(runs, tmp_path):
    from train.cli import main as train_main

    teacher_dir = runs["softmax"][0]  # split seed 0: the student draws the same known classes
    out = tmp_path / "student"
    assert train_main(["--method", "softmax", "--dataset", "digits", "--epochs", "1",
                       "--width", "0.125", "--batch-size", "128",
                       "--teacher", str(teacher_dir), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher"]["run"] == str(teacher_dir)
    assert metrics["macs"] < metrics["teacher"]["macs"]


@pytest.mark.parametrize("args, message", [
    (["--teacher", "{empty}"], "--teacher {empty}: not a run directory (no model.pt)"),
    (["--teacher", "{teacher}", "--known", "0,1,2"], "--teacher {teacher}: trained on classes"),
    (["--teacher", "{teacher}", "--dataset", "mnist5k"],
     "--teacher {teacher}: input shape [1, 8, 8], this run has [1, 28, 28]"),
])
def test_incompatible_teacher_is_a_one_line_error(runs, tmp_path, capsys, args, message):
    from train.cli import main as train_main

    paths = {"empty": str(tmp_path), "teacher": str(runs["softmax"][0])}
    args = [arg.format(**paths) for arg in args]
    assert train_main(["--method", "softmax", "--dataset", "digits", "--epochs", "1", *args,
                       "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(**paths)) and err.count("\n") == 1
    assert not (tmp_path / "never" / "model.pt").exists()
