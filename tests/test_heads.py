import pytest
import torch

from models import ModelSpec, build_classifier
from models.linear_head import LinearHead
from models.reciprocal_points import ReciprocalPointHead


def head_with_points(points, variant, per_class=1, score="mls"):
    head = ReciprocalPointHead(2, len(points) // per_class, per_class, variant, score)
    with torch.no_grad():
        head.points.copy_(torch.tensor(points))
    return head


def test_reciprocal_distances_by_hand():
    head = head_with_points([[1.0, 0.0], [0.0, 2.0]], "rpl")
    out = head(torch.tensor([[1.0, 1.0]]))
    # d_e = ||z - P||^2 / D: (0 + 1) / 2 and (1 + 1) / 2
    assert out["distances"].tolist() == [[0.5, 1.0]]
    assert out["logits"].tolist() == [[0.5, 1.0]]
    assert out["unknown_score"].tolist() == [-1.0]


def test_arpl_logits_subtract_dot_product():
    head = head_with_points([[1.0, 0.0], [0.0, 2.0]], "arpl")
    out = head(torch.tensor([[1.0, 1.0]]))
    # l = d_e - z.P = [0.5 - 1, 1 - 2]
    assert out["logits"].tolist() == [[-0.5, -1.0]]
    assert out["unknown_score"].tolist() == [0.5]


def test_several_points_per_class_are_averaged():
    head = head_with_points([[1.0, 0.0], [0.0, 2.0]], "arpl", per_class=2)
    out = head(torch.tensor([[1.0, 1.0]]))
    assert out["distances"].tolist() == [[0.75]]
    assert out["logits"].tolist() == [[0.75 - 1.5]]


def test_scores_rank_far_points_as_known():
    head = head_with_points([[0.0, 0.0], [0.1, 0.0]], "arpl")
    near, far = torch.tensor([[0.05, 0.0]]), torch.tensor([[-3.0, 4.0]])
    for score in ("mls", "msp", "distance"):
        head.score = score
        assert head(near)["unknown_score"] > head(far)["unknown_score"], score


def test_linear_head_scores():
    head = LinearHead(2, 2, score="msp")
    with torch.no_grad():
        head.fc.weight.copy_(torch.eye(2))
        head.fc.bias.zero_()
    out = head(torch.tensor([[2.0, 0.0]]))
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)[0]
    assert out["unknown_score"].item() == pytest.approx(-p.item())
    assert head.all_scores(out)["mls"].item() == pytest.approx(-2.0)


@pytest.mark.parametrize("arch,channels,size", [("small_cnn", 1, 28), ("small_cnn", 1, 8),
                                                ("resnet18", 3, 32)])
def test_classifier_output_shapes(arch, channels, size):
    spec = ModelSpec(arch=arch, in_channels=channels, num_classes=6, head="reciprocal",
                     width=0.25, mean=(0.5,) * channels, std=(0.5,) * channels)
    model = build_classifier(spec).eval()
    out = model(torch.rand(5, channels, size, size))
    assert out["logits"].shape == (5, 6)
    assert out["distances"].shape == (5, 6)
    assert out["unknown_score"].shape == (5,)
    assert out["embedding"].shape == (5, model.backbone.embed_dim)


def test_spec_round_trips_through_dict():
    spec = ModelSpec(arch="small_cnn", in_channels=1, num_classes=6, head="linear", mean=(0.1,))
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_feature_scale_makes_the_head_ignore_embedding_norm():
    head = ReciprocalPointHead(4, 3, points_per_class=2, feature_scale=8.0)
    z = torch.rand(5, 4) + 0.1
    small, large = head(z), head(10 * z)
    assert torch.allclose(small["logits"], large["logits"], atol=1e-5)
    # with the scale, ||z|| is fixed at 8: d_e = (64 + ||P||^2 - 2 z.P) / D
    zn = 8 * torch.nn.functional.normalize(z, dim=1)
    expected = (zn[:, None, None, :] - head.points.view(3, 2, 4)[None]).pow(2).mean(3).mean(2)
    assert torch.allclose(small["distances"], expected, atol=1e-5)
