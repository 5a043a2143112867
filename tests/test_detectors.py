"""Post-hoc detectors (models/detectors): hand-computed values, fitting, ONNX parity, CLI errors."""
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import DETECTORS, ModelSpec, build_classifier
from models.detectors import (EnergyScore, KnnScore, LogitKnnFusion, MahalanobisScore,
                              MaxLogitScore, MaxSoftmaxScore, VimScore)
from models.export_wrapper import ContractModel
from train.cli import main as train_main


def test_logit_scores_by_hand():
    outputs = {"logits": torch.tensor([[0.0, 0.0], [2.0, 0.0]])}
    assert torch.allclose(MaxSoftmaxScore()(outputs), torch.tensor([-0.5, -1 / (1 + math.exp(-2))]))
    assert torch.allclose(MaxLogitScore()(outputs), torch.tensor([0.0, -2.0]))
    # -logsumexp: -log(2), -log(e^2 + 1)
    assert torch.allclose(EnergyScore()(outputs),
                          torch.tensor([-math.log(2), -math.log(math.exp(2) + 1)]))
    # at the training temperature T: -T logsumexp(l / T); T = 0.5: -0.5 log 2, -0.5 log(e^4 + 1)
    assert torch.allclose(EnergyScore(0.5)(outputs),
                          torch.tensor([-0.5 * math.log(2), -0.5 * math.log(math.exp(4) + 1)]))


def test_knn_is_minus_the_kth_cosine_similarity():
    knn = KnnScore(embed_dim=2, bank_size=3, k=1)
    bank = torch.tensor([[3.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])  # unit: (1,0), (0,1), (-1,0)
    knn.fit({"embedding": bank}, torch.zeros(3, dtype=torch.long), {})
    query = {"embedding": torch.tensor([[5.0, 5.0], [1.0, 0.0]])}
    # (1,1)/sqrt2 has similarities 0.7071, 0.7071, -0.7071; (1, 0) has 1, 0, -1
    assert torch.allclose(knn(query), torch.tensor([-1 / math.sqrt(2), -1.0]))
    knn.k = 2
    assert torch.allclose(knn(query), torch.tensor([-1 / math.sqrt(2), 0.0]))


def test_knn_bank_is_a_seeded_subsample_of_unit_rows():
    embedding = torch.randn(50, 4)
    first = KnnScore(4, bank_size=10).fit({"embedding": embedding}, None, {}, seed=3).bank
    again = KnnScore(4, bank_size=10).fit({"embedding": embedding}, None, {}, seed=3).bank
    other = KnnScore(4, bank_size=10).fit({"embedding": embedding}, None, {}, seed=4).bank
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.allclose(first.norm(dim=1), torch.ones(10))
    unit = torch.nn.functional.normalize(embedding, dim=1)
    assert all(any(torch.allclose(row, u) for u in unit) for row in first)  # rows of the data


def test_knn_refuses_k_above_the_bank():
    with pytest.raises(ValueError, match="1 <= k <= bank size"):
        KnnScore(4, bank_size=2, k=3)


def test_mahalanobis_by_hand():
    # class 0 around (0, 0), class 1 around (4, 0), each +-1 in x and +-2 in y (two points
    # each): the shared covariance is diag(0.5, 2)
    z = torch.tensor([[-1.0, 0], [1, 0], [0, 2], [0, -2], [3, 0], [5, 0], [4, 2], [4, -2]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    detector = MahalanobisScore(2, 2).fit({"embedding": z}, labels, {})
    assert torch.allclose(detector.means, torch.tensor([[0.0, 0], [4, 0]]))
    assert torch.allclose(detector.precision, torch.diag(torch.tensor([2.0, 0.5])), atol=1e-5)
    query = {"embedding": torch.tensor([[1.0, 1.0], [2.0, 0.0], [4.0, 3.0]])}
    # min over classes of 2 dx^2 + dy^2 / 2: (1,1) -> 2.5; (2,0) -> 8 to both; (4,3) -> 4.5
    assert torch.allclose(detector(query), torch.tensor([2.5, 8.0, 4.5]), atol=1e-4)


def test_vim_residual_alpha_and_score_by_hand():
    # training embeddings spread along x (variance 1), +-0.1 in y uncorrelated with x, 0 in z
    # (mean (1, 0, 0)): the principal subspace of dim 1 is x, a residual is the (y, z) length
    z = torch.tensor([[0.0, 0.1, 0], [0, -0.1, 0], [2, 0.1, 0], [2, -0.1, 0]])
    logits = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [2.0, 0.0]])  # mean max logit 2
    detector = VimScore(3, dim=1).fit({"embedding": z, "logits": logits}, None, {})
    assert torch.allclose(detector.origin, torch.tensor([1.0, 0, 0]))
    assert torch.allclose(detector.alpha, torch.tensor(2.0 / 0.1), rtol=1e-4)  # mean residual 0.1
    query = {"embedding": torch.tensor([[1.0, 3.0, 4.0]]), "logits": torch.tensor([[0.0, 0.0]])}
    assert torch.allclose(detector(query), torch.tensor([20.0 * 5.0 - math.log(2)]), rtol=1e-4)


def test_fusion_standardises_both_parts_on_known_validation():
    bank = torch.eye(2)
    val = {"embedding": torch.tensor([[1.0, 0.0], [1.0, 1.0]]),
           "logits": torch.tensor([[2.0, 0.0], [4.0, 0.0]])}
    fusion = LogitKnnFusion(2, bank_size=2).fit({"embedding": bank}, None, val)
    # validation parts: logit (-2, -4), knn (-1, -0.7071): centre and sample std of each
    assert torch.allclose(fusion.centre, torch.tensor([-3.0, -(1 + 2 ** -0.5) / 2]))
    assert torch.allclose(fusion.scale, torch.tensor([2 ** 0.5, (1 - 2 ** -0.5) / 2 ** 0.5]))
    query = {"embedding": torch.tensor([[0.0, 1.0]]), "logits": torch.tensor([[3.0, 1.0]])}
    expected = (-3 + 3) / 2 ** 0.5 + (-1 + (1 + 2 ** -0.5) / 2) / ((1 - 2 ** -0.5) / 2 ** 0.5)
    assert torch.allclose(fusion(query), torch.tensor([expected]), atol=1e-5)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_fitted_detector_exports_with_parity_and_reloads(name, tmp_path):
    spec = ModelSpec(arch="small_cnn", in_channels=1, num_classes=3, head="reciprocal", width=0.25,
                     points_per_class=2, feature_scale=8.0, detector=name, knn_k=2, bank_size=16)
    model = build_classifier(spec).eval()
    dim = model.backbone.embed_dim
    train = {"embedding": torch.rand(40, dim), "logits": torch.randn(40, 3)}
    model.detector.fit(train, torch.arange(40) % 3, {"embedding": torch.rand(10, dim),
                                                    "logits": torch.randn(10, 3)})
    rebuilt = build_classifier(spec)
    rebuilt.load_state_dict(model.state_dict())  # the checkpoint holds the fitted detector
    images = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        expected = model(images)
        assert torch.allclose(rebuilt.eval()(images)["unknown_score"], expected["unknown_score"],
                              atol=1e-6)
        assert torch.equal(expected["reciprocal_score"], expected["head_score"])
    contract = ContractModel(model).eval()
    torch.onnx.export(contract, (images,), str(tmp_path / "m.onnx"), input_names=["images"],
                      output_names=contract.output_names, opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch"} for n in ["images", *contract.output_names]})
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip(contract.output_names, session.run(None, {"images": images.numpy()})))
    assert np.abs(got["unknown_score"] - expected["unknown_score"].numpy()).max() < 1e-4
    assert np.abs(got["reciprocal_score"] - expected["reciprocal_score"].numpy()).max() < 1e-4


@pytest.mark.parametrize("args, message", [
    (["--detector", "odin"], "unknown --detector 'odin'; choose from none, msp"),
    (["--bank-size", "0"], "--bank-size must be > 0, got 0"),
    (["--knn-k", "0"], "--knn-k must be > 0, got 0"),
    (["--knn-k", "8", "--bank-size", "4"], "--knn-k 8 is larger than the feature bank (--bank-size 4)"),
    (["--knn-k", "5000", "--bank-size", "5000"], "--knn-k 5000 is larger than the feature bank: "
                                                 "the training split has"),
    (["--detector", "none", "--knn-k", "5000", "--bank-size", "5000"],
     "--knn-k 5000 is larger than the feature bank"),  # the suite fits k-NN in every run
    (["--logit-adjust", "inf"], "--logit-adjust must be finite and >= 0, got inf"),
])
def test_bad_detector_settings_exit_2_with_one_line(args, message, tmp_path, capsys):
    code = train_main(["--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r" / "model.pt").exists()
