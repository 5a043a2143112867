"""Adding a reciprocal-point variant, walked through end to end.

A new variant is three edits and a test:
  1. models/reciprocal_points.py: its logits from (d_e, d_d), one entry in VARIANTS;
  2. train/losses/<name>.py: a ReciprocalLoss subclass with its open-space term;
  3. train/losses/__init__.py: one line in LOSSES (the method name is also the head variant).
This test makes exactly those registrations (in memory) and nothing else, then trains with
`--method <name>` through the CLI, exports to ONNX and answers through the serving predictor:
config, validation, model spec, loss factory, export and serving all
pick the variant up from the two registries (the SLA task list too).
"""
import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import models.reciprocal_points as reciprocal_points
import train.losses as losses
from export.cli import main as export_main
from handlers.predictor import Predictor
from train.cli import main as train_main
from train.losses.reciprocal import ReciprocalLoss


def half_dot_logits(euclidean: torch.Tensor, dot: torch.Tensor) -> torch.Tensor:
    """A made-up variant between RPL and ARPL: l_k = d_e - d_d / 2."""
    return euclidean - 0.5 * dot


class HalfDotLoss(ReciprocalLoss):
    default_temperature = 0.5

    def open_space(self, own_distance: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        return F.relu(own_distance - radius).mean()


@pytest.fixture
def half_dot(monkeypatch):
    monkeypatch.setitem(reciprocal_points.VARIANTS, "half-dot", half_dot_logits)  # edit 1
    monkeypatch.setitem(losses.LOSSES, "half-dot", HalfDotLoss)  # edits 2 and 3


def test_a_new_variant_trains_exports_and_serves(half_dot, tmp_path):
    run_dir = tmp_path / "run"
    assert train_main(["--method", "half-dot", "--dataset", "digits", "--epochs", "1",
                       "--width", "0.25", "--out", str(run_dir)]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == "half-dot" and config["temperature"] == 0.5  # the loss's default
    spec = torch.load(run_dir / "model.pt", weights_only=True)["model_spec"]
    assert spec["head"] == "reciprocal" and spec["variant"] == "half-dot"

    onnx_path = tmp_path / "model.onnx"
    assert export_main([str(run_dir), "--out", str(onnx_path)]) == 0
    predictor = Predictor(onnx_path)
    assert predictor.has_reciprocal and predictor.info.method == "half-dot"
    images = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    answers = predictor.answers(predictor.run(images))
    assert len(answers) == 3 and all("reciprocal_score" in answer for answer in answers)


def test_a_new_variant_is_an_sla_task_too(half_dot, tmp_path):
    from train.config import TrainConfig

    sla = TrainConfig().override(method="sla", sla_task="half-dot")
    sla.validate()
    assert sla.task == "half-dot" and sla.head == "reciprocal"


def test_an_unregistered_variant_is_a_one_line_error(capsys):
    assert train_main(["--method", "half-dot", "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown method 'half-dot'; choose from softmax, rpl, arpl")
    assert err.count("\n") == 1
