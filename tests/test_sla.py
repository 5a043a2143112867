"""SLA: views, joint labels, aggregation, the SLA+SD loss, and SLA runs end to end."""
import numpy as np
import pytest
import torch

from models import AggregatedClassifier, ModelSpec, build_classifier
from models.sla import PERMUTATIONS, aggregate, joint_labels, transform_views, view_logits
from rundir import RunDirectory
from tests.helpers import TINY_RUN, open_set_figures, read_json
from train.losses import CrossEntropyLoss, ReciprocalPointLoss, SelfLabelAugmentationLoss


def test_joint_labels_are_class_major_in_view_major_order():
    labels = torch.tensor([2, 0])
    # views 0..3 of image 0 (class 2) get 8..11, of image 1 (class 0) get 0..3
    assert joint_labels(labels, 4).tolist() == [8, 0, 9, 1, 10, 2, 11, 3]


def test_aggregate_by_hand():
    # B = 1 image, N = 2 classes, M = 2 views; columns are i*M + j: (c0,t0) (c0,t1) (c1,t0) (c1,t1)
    joint = torch.tensor([[1.0, 10.0, 2.0, 20.0],    # view 0: keep columns (c0,t0)=1, (c1,t0)=2
                          [30.0, 3.0, 40.0, 4.0]])   # view 1: keep columns (c0,t1)=3, (c1,t1)=4
    assert aggregate(joint, 2).tolist() == [[(1 + 3) / 2, (2 + 4) / 2]]
    assert view_logits(joint, 2).tolist() == [[[1.0, 2.0]], [[3.0, 4.0]]]  # M x B x N


class _JointStub(torch.nn.Module):
    """N = 2 classes, M = 4 rotations: joint logit (i, j) = 1 where i = 1 and j is odd, else 0,
    so only the 90 and 270 degree views predict class 1 (ties go to class 0)."""

    def forward(self, views):
        joint = torch.zeros(views.shape[0], 8)
        joint[:, [5, 7]] = 1.0  # columns i*M + j for (1, 1) and (1, 3)
        return {"joint_logits": joint}


def test_view_accuracy_scores_each_view_on_its_own():
    from train.evaluate import view_accuracy

    images = np.zeros((3, 1, 4, 4), dtype=np.uint8)
    labels = np.array([1, 1, 0])
    assert view_accuracy(_JointStub(), "rotation", images, labels, torch.device("cpu"),
                         batch_size=2) == pytest.approx([1 / 3, 2 / 3, 1 / 3, 2 / 3])


def test_aggregate_two_images_four_views():
    rng = torch.Generator().manual_seed(0)
    joint = torch.randn(4 * 2, 3 * 4, generator=rng)  # M*B x N*M
    expected = torch.zeros(2, 3)
    for b in range(2):
        for i in range(3):
            expected[b, i] = sum(joint[j * 2 + b, i * 4 + j] for j in range(4)) / 4
    assert torch.allclose(aggregate(joint, 4), expected)


def test_rotations_move_a_corner_pixel_counter_clockwise():
    image = torch.zeros(1, 1, 3, 3)
    image[0, 0, 0, 2] = 1.0  # top-right
    views = transform_views(image, "rotation")
    corners = [tuple(torch.nonzero(view[0]).tolist()[0]) for view in views]  # (row, col)
    assert corners == [(0, 2), (0, 0), (2, 0), (2, 2)]  # top-right, top-left, bottom-left, bottom-right
    for k in range(4):
        assert torch.equal(views[k:k + 1], torch.rot90(image, k, dims=(2, 3)))


def test_permutations_reorder_channels_identity_first():
    image = torch.arange(3.0).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    views = transform_views(image, "permutation")
    assert views.shape == (12, 3, 2, 2)
    for j, order in enumerate(PERMUTATIONS):
        assert views[2 * j, :, 0, 0].tolist() == list(map(float, order))
    assert PERMUTATIONS[0] == (0, 1, 2)


def sla_model(head: str = "linear", variant: str = "arpl") -> torch.nn.Module:
    return build_classifier(ModelSpec(arch="small_cnn", in_channels=1, num_classes=3, head=head,
                                      width=0.25, variant=variant, points_per_class=2,
                                      feature_scale=8.0, sla_transform="rotation"))


def test_sla_loss_is_the_sum_of_its_three_terms():
    model = sla_model()
    images, target = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 1])
    outputs = model(transform_views(images, "rotation"))
    loss = SelfLabelAugmentationLoss(CrossEntropyLoss(), "rotation")(outputs, target)
    joint = outputs["joint_logits"]
    sla = torch.nn.functional.cross_entropy(joint, joint_labels(target, 4))
    u = outputs["logits"][:4]
    p = torch.softmax(aggregate(joint, 4), 1)
    kl = (p * (p.log() - torch.log_softmax(u, 1))).sum(1).mean()
    ce = torch.nn.functional.cross_entropy(u, target)
    assert loss.item() == pytest.approx((sla + kl + ce).item(), rel=1e-5)
    # --sla-aggregate-loss adds CE on the aggregated logits s, and nothing else
    with_agg = SelfLabelAugmentationLoss(CrossEntropyLoss(), "rotation", aggregate_loss=True)
    ag_ce = torch.nn.functional.cross_entropy(aggregate(joint, 4), target)
    assert with_agg(outputs, target).item() == pytest.approx((sla + kl + ce + ag_ce).item(), rel=1e-5)


@pytest.mark.parametrize("task", ["softmax", "rpl"])
def test_sla_training_reaches_every_head_and_loss_falls(tiny_problem, task):
    images, labels = tiny_problem
    model = sla_model("linear" if task == "softmax" else "reciprocal", "rpl")
    base = CrossEntropyLoss() if task == "softmax" else ReciprocalPointLoss(temperature=0.1)
    loss_fn = SelfLabelAugmentationLoss(base, "rotation")
    optimizer = torch.optim.SGD([*model.parameters(), *loss_fn.parameters()], lr=0.05, momentum=0.9)
    losses = []
    for step in range(20):
        loss = loss_fn(model(transform_views(images, "rotation")), labels)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            assert model.joint_head.weight.grad.abs().sum() > 0
            head_param = model.head.fc.weight if task == "softmax" else model.head.points
            assert head_param.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]


def test_aggregated_classifier_matches_per_view_passes():
    model = sla_model().eval()
    images = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        out = AggregatedClassifier(model, "rotation")(images)
        per_view = [model(torch.rot90(images, k, dims=(2, 3)))["joint_logits"] for k in range(4)]
    expected = sum(per_view[j][:, j::4] for j in range(4)) / 4  # column i*M + j for view j
    assert torch.allclose(out["logits"], expected, atol=1e-5)
    assert torch.allclose(out["unknown_score"], -expected.amax(1), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(out["embedding"], model(images)["embedding"], atol=1e-5)


def test_aggregated_classifier_refuses_a_model_without_joint_head(tiny_model):
    with pytest.raises(ValueError, match="trained with SLA"):
        AggregatedClassifier(tiny_model("softmax"), "rotation")


@pytest.fixture(scope="module")
def sla_run(tmp_path_factory):
    from train.cli import main as train_main

    run_dir = tmp_path_factory.mktemp("sla") / "run"
    assert train_main([*TINY_RUN, "--method", "sla", "--sla-task", "rpl", "--out", str(run_dir)]) == 0
    return run_dir


def rotation_average(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """SLA+AG by hand: s_i = mean_j joint(rot90^j x)[i*M + j], unknown score -max_i s_i."""
    logits = sum(model(torch.rot90(images, j, dims=(2, 3)))["joint_logits"][:, j::4]
                 for j in range(4)) / 4
    return {"logits": logits, "unknown_score": -logits.amax(1)}


def test_sla_run_reports_both_inference_modes(sla_run):
    metrics = read_json(sla_run / "metrics.json")
    assert metrics["method"] == "sla" and metrics["task"] == "rpl"
    assert "distance" in metrics["scores"]  # a reciprocal head
    model, checkpoint = RunDirectory(sla_run).load_classifier()
    single = open_set_figures(model, sla_run, checkpoint.threshold)  # SLA+SD: one pass
    assert {key: metrics[key] for key in single} == pytest.approx(single, abs=1e-6)
    ag = metrics["aggregated"]
    assert (ag["passes"], ag["score"], ag["threshold"]) == (4, "mls", checkpoint.aggregated_threshold)
    aggregated = open_set_figures(lambda x: rotation_average(model, x), sla_run, ag["threshold"])
    assert {key: ag[key] for key in aggregated} == pytest.approx(aggregated, abs=1e-6)
    split = RunDirectory(sla_run).split_images()
    images = torch.from_numpy(np.asarray(split["test_known"]))
    with torch.no_grad():  # each view alone: its own N columns of the joint head
        views = [model(torch.rot90(images, j, dims=(2, 3)))["joint_logits"][:, j::4] for j in range(4)]
    expected = [float(np.mean(view.argmax(1).numpy() == split["test_labels"])) for view in views]
    assert ag["view_acc"] == pytest.approx(expected, abs=1e-9)


def test_sla_exports_single_pass_by_default_and_aggregated_on_request(sla_run, tmp_path):
    from export.onnx_export import export_onnx
    from handlers.contract import load_model

    single = export_onnx(sla_run, tmp_path / "sd.onnx")
    assert single["outputs"] == ["logits", "unknown_score", "reciprocal_score", "distances"]
    aggregated = export_onnx(sla_run, tmp_path / "ag.onnx", aggregated=True)
    assert aggregated["outputs"] == ["logits", "unknown_score"]
    assert max(aggregated["parity_max_abs_diff"].values()) < 1e-4
    _, info = load_model(tmp_path / "ag.onnx", providers=["CPUExecutionProvider"])
    metrics = read_json(sla_run / "metrics.json")
    assert info.method == "sla+ag" and info.threshold == pytest.approx(metrics["aggregated"]["threshold"])
